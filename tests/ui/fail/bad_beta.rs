use cache_runtime::cached;

#[cached(expire = 60, beta = -1.5)]
async fn score(id: u64) -> u64 {
    id
}

#[cached(expire = 60, beta = "high")]
async fn rank(id: u64) -> u64 {
    id
}

fn main() {}
