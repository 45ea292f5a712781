use cache_runtime::cached;

#[cached(namespace = "users:v2")]
async fn get_user(id: u64) -> u64 {
    id
}

fn main() {}
