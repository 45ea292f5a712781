use cache_runtime::cached;

#[cached(expire = 60, key = "a:<id>", expire = 30)]
async fn get_user(id: u64) -> u64 {
    id
}

fn main() {}
