use cache_runtime::cached;

// A connection: what it reads from does not depend on which one it is.
struct Db;

impl Db {
    async fn name(&self, id: u64) -> String {
        format!("user {id}")
    }
}

// The default key encodes every parameter not in `skip`: `db` too, and `Db` is not
// `Serialize`. The way out is `skip = [db]`, not deriving `Serialize` on `Db`.
#[cached(expire = 60)]
async fn name(db: &Db, id: u64) -> String {
    db.name(id).await
}

fn main() {}
