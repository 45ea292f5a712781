use cache_runtime::cached;

#[cached(expires = 60)]
async fn get_user(id: u64) -> u64 {
    id
}

fn main() {}
