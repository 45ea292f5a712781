//! `crate = "…"`: the runtime reached through a renamed dependency. Nothing named
//! `cache_runtime` exists in this crate, so it compiles only if the macros emit the path they
//! were given.

/// A cached service function through the renamed crate.
#[my_cache::cached(crate = "my_cache", expire = 60, key = "k:<id>")]
pub async fn get(id: u64) -> u64 {
    id
}

/// A write that invalidates it, through the renamed crate too.
#[my_cache::invalidates(crate = "my_cache", key = "k:<id>")]
pub async fn set(id: u64) -> Result<(), ()> {
    let _ = id;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "current_thread")]
    async fn the_renamed_runtime_caches_and_invalidates() {
        assert_eq!(super::get(1).await, 1);
        assert_eq!(super::get(1).await, 1);
        assert_eq!(my_cache::global().stats().hits, 1);
        super::set(1).await.unwrap();
        assert_eq!(super::get(1).await, 1);
        assert_eq!(my_cache::global().stats().misses, 2, "invalidated");
    }
}
