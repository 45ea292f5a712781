use cache_runtime::{cached, Cache};

struct Repo {
    cache: Cache,
    tenant: String,
}

impl Repo {
    #[cached(expire = 60, key = "t:<self.tenant>:<id>", cache = self.cache)]
    async fn by_ref(&self, id: u64) -> Option<String> {
        Some(format!("{}:{id}", self.tenant))
    }

    #[cached(cache = self.cache)]
    async fn by_mut(&mut self, id: u64) -> u64 {
        self.tenant.push('!');
        id
    }

    /// Doc comments and other attributes are kept.
    #[allow(clippy::unused_async)]
    #[cached(expire = 5)]
    pub(crate) async fn associated(id: u64) -> Result<u64, std::io::Error> {
        Ok(id)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut repo = Repo { cache: Cache::memory(), tenant: "acme".into() };
    assert_eq!(repo.by_ref(1).await.as_deref(), Some("acme:1"));
    assert_eq!(repo.by_mut(2).await, 2);
    assert_eq!(Repo::associated(3).await.unwrap(), 3);
}
