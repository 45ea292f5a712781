use cache_runtime::cached;

#[cached(expire = 60, public)]
async fn get_user(id: u64) -> u64 {
    id
}

fn main() {}
