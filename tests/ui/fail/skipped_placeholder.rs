use cache_runtime::cached;

#[cached(key = "user:<db>:<id>", skip = [db])]
async fn get_user(db: &str, id: u64) -> u64 {
    let _ = db;
    id
}

fn main() {}
