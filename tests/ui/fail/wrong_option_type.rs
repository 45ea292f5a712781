use cache_runtime::cached;

#[cached(expire = "x", key = 5)]
async fn get_user(id: u64) -> u64 {
    id
}

fn main() {}
