//! What the benchmarks share: the JSON user every figure caches, the example app's own type.

pub use examples::db::User;

/// What the example app's database holds for `id` (same fields, same sizes).
pub fn user(id: u64) -> User {
    User {
        id,
        name: format!("User {id}"),
        email: format!("user{id}@example.com"),
        updated_at: "2026-11-28T04:00:00Z".to_owned(),
    }
}
