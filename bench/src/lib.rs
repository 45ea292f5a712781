//! What the benchmarks share: the JSON user every figure caches (the same fields as the
//! example app's `GET /users/{id}`).

use serde::{Deserialize, Serialize};

/// A user as the example app serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    pub name: String,
    pub email: String,
    pub updated_at: String,
}

/// What the example app's database holds for `id` (same fields, same sizes).
pub fn user(id: u64) -> User {
    User {
        id,
        name: format!("User {id}"),
        email: format!("user{id}@example.com"),
        updated_at: "2026-11-28T04:00:00Z".to_owned(),
    }
}
