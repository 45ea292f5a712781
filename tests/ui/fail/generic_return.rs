use cache_runtime::{cached, invalidates};

// `T` could be a `Result` (whose `Err` must not be stored) or an `Option`: only each call knows.
#[cached(key = "g:<T>:<id>")]
async fn generic<T>(id: u64) -> T
where
    T: Default + Clone + serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let _ = id;
    T::default()
}

#[invalidates(key = "g:<id>")]
async fn write<T: Default>(id: u64) -> T {
    let _ = id;
    T::default()
}

fn main() {}
