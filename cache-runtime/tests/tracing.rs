//! Tracing events for hits, misses, computations and invalidations, with keys redacted on
//! request.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_runtime::Cache;

/// Collects what tracing writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs_of(redact: bool) -> String {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let cache = Cache::builder().redact_keys(redact).build().unwrap();
            let ttl = Duration::from_secs(60);
            cache.get_or_fetch("user:alice@example.com", ttl, || async { 1u8 }).await;
            cache.get_or_fetch("user:alice@example.com", ttl, || async { 1u8 }).await;
            cache.invalidate("user:alice@example.com").await.unwrap();
        });
    });
    let bytes = captured.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn hits_misses_and_invalidations_are_traced_and_keys_can_be_redacted() {
    let plain = logs_of(false);
    for event in ["miss", "computed", "hit", "invalidated"] {
        assert!(plain.contains(event), "no {event:?} event in:\n{plain}");
    }
    assert!(plain.contains("alice@example.com"));
    let redacted = logs_of(true);
    assert!(redacted.contains("hit") && redacted.contains("miss"));
    assert!(!redacted.contains("alice"), "a redacted key leaked:\n{redacted}");
}
