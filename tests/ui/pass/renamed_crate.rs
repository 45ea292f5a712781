mod app {
    use ::cache_runtime as my_cache;

    #[my_cache::cached(crate = "my_cache", expire = 60, key = "k:<id>")]
    pub async fn get(id: u64) -> u64 {
        id
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    assert_eq!(app::get(1).await, 1);
}
