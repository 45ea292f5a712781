use cache_runtime::cached;

#[derive(Clone)]
struct Connection;

type Conn = Result<Connection, String>;

// Behind an alias, the type still decides: `Connection` is what would be stored.
#[cached(expire = 60)]
async fn connect(id: u64) -> Conn {
    let _ = id;
    Ok(Connection)
}

// Not a `Result` or an `Option`: the value itself would be stored.
#[cached(expire = 60)]
async fn plain(id: u64) -> Connection {
    let _ = id;
    Connection
}

fn main() {}
