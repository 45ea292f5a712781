use cache_runtime::cached;

// `get_doc::<A>(1)` and `get_doc::<B>(1)` would both be stored under `doc:1`.
#[cached(key = "doc:<id>")]
async fn get_doc<T>(id: u64) -> Option<T>
where
    T: Default + Clone + serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let _ = id;
    Some(T::default())
}

fn main() {}
