use cache_runtime::cached;

#[cached(key = "user:<id>", tags = ["users", "org:<org_id>"])]
async fn get_user(id: u64) -> u64 {
    id
}

fn main() {}
