use cache_runtime::cached;

#[cached(key = "t:<self.tenant>")]
async fn get_user(id: u64) -> u64 {
    id
}

fn main() {}
