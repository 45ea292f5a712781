use cache_runtime::cached;

#[cached(expire = 60)]
async fn touch(id: u64) {
    let _ = id;
}

fn main() {}
