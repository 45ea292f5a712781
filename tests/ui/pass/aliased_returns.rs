//! Return types behind aliases: classified by type (an `Err` is not stored), and `Self`.
use cache_runtime::{cached, invalidates};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct DbError;

type AppResult<T> = Result<T, DbError>;
type Found = Option<u32>;

#[cached(key = "a:<id>")]
async fn app_result(id: u32) -> AppResult<u32> {
    if id == 0 {
        return Err(DbError);
    }
    Ok(id)
}

#[cached(key = "f:<id>")]
async fn found(id: u32) -> Found {
    (id > 0).then_some(id)
}

#[invalidates(key = "a:<id>")]
async fn write(id: u32) -> AppResult<()> {
    let _ = id;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    assert!(app_result(0).await.is_err());
    assert_eq!(app_result(1).await.unwrap(), 1);
    assert_eq!(found(0).await, None);
    write(1).await.unwrap();
}
