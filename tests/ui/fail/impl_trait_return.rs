use cache_runtime::cached;

#[cached(expire = 60)]
async fn numbers(n: u64) -> impl Iterator<Item = u64> {
    0..n
}

fn main() {}
