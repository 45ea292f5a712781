use cache_runtime::cached;

#[cached(expire = 0)]
async fn get_user(id: u64) -> u64 {
    id
}

fn main() {}
