use cache_runtime::cached;

#[cached(skip = [pool])]
async fn get_user(db: &str, id: u64) -> u64 {
    let _ = db;
    id
}

fn main() {}
