use cache_runtime::cached;

#[cached(expire = 60, key = "user:<user_id>")]
async fn get_user(id: u64, verbose: bool) -> u64 {
    let _ = verbose;
    id
}

fn main() {}
