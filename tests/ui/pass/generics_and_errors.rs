use std::fmt::Display;

use cache_runtime::cached;

#[derive(Debug)]
struct DbError;

impl From<std::num::ParseIntError> for DbError {
    fn from(_: std::num::ParseIntError) -> Self {
        DbError
    }
}

#[cached(key = "g:<id>")]
async fn generic<I>(id: I) -> Result<u64, DbError>
where
    I: Display + Send,
{
    // `?` converts errors exactly as in the user's fn.
    let n: u64 = id.to_string().parse()?;
    if n == 0 {
        return Err(DbError);
    }
    Ok(n)
}

#[cached(key = "io:<n>")]
async fn io_result(n: u8) -> std::io::Result<u8> {
    Ok(n)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    assert_eq!(generic(5u8).await.unwrap(), 5);
    assert!(generic("x").await.is_err());
    assert!(generic(0).await.is_err());
    assert_eq!(io_result(1).await.unwrap(), 1);
}
