//! A one-row "database" behind cached reads and invalidating writes, shared by the coherence
//! and integrity tests: `read_plain` (a key), `read_row` (a tag and a namespace).

use std::sync::atomic::{AtomicU64, Ordering};

use cache_runtime::{cached, invalidates, Cache};

use super::Calls;

#[derive(Default, Debug)]
pub struct Db {
    pub row: AtomicU64,
    pub reads: Calls,
}

#[cached(expire = 60, key = "row:<id>", tags = ["rows"], namespace = "rows", cache = cache, skip = [cache, db])]
pub async fn read_row(cache: &Cache, db: &Db, id: u32) -> u64 {
    let _ = id;
    db.reads.hit();
    db.row.load(Ordering::SeqCst)
}

#[cached(expire = 60, key = "plain:<id>", cache = cache, skip = [cache, db])]
pub async fn read_plain(cache: &Cache, db: &Db, id: u32) -> u64 {
    let _ = id;
    db.reads.hit();
    db.row.load(Ordering::SeqCst)
}

#[invalidates(key = "plain:<id>", cache = cache)]
pub async fn write_plain(cache: &Cache, db: &Db, id: u32, value: u64) -> Result<(), ()> {
    let _ = id;
    db.row.store(value, Ordering::SeqCst);
    Ok(())
}

#[invalidates(tags = ["rows"], cache = cache)]
pub async fn write_tagged(cache: &Cache, db: &Db, value: u64) -> Result<(), ()> {
    db.row.store(value, Ordering::SeqCst);
    Ok(())
}

/// Waits (5 s at most) until `cache`'s L1 is live; its first cached call starts the channel.
pub async fn live(cache: &Cache) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    read_plain(cache, &Db::default(), u32::MAX).await;
    while !cache.l1_live() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until the L1 is live");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
