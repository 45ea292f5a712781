use cache_runtime::cached;

#[derive(Clone)]
struct Connection;

#[cached(expire = 60)]
async fn connect(id: u64) -> Result<Connection, String> {
    let _ = id;
    Ok(Connection)
}

fn main() {}
