//! The runtime with a chosen feature set (see Cargo.toml). The tests are in `tests/`; what must
//! *not* compile without a feature is pinned here, as doctests that run with this crate's
//! features.
//!
//! Without `redis`, the builder has no Redis settings:
#![cfg_attr(
    not(feature = "redis"),
    doc = "```compile_fail\nlet _ = cache_runtime::Cache::builder().redis(\"redis://127.0.0.1:6379\");\n```"
)]
#![cfg_attr(not(feature = "redis"), doc = "```compile_fail\nlet _ = cache_runtime::Cache::builder().l1(true);\n```")]
//!
//! Without `axum`, `#[cached]` on a handler is a compile error that names the feature:
#![cfg_attr(
    not(feature = "axum"),
    doc = "```compile_fail\nstruct Path<T>(T); // an extractor's name: `#[cached]` reads this fn as a handler\n#[cache_runtime::cached(expire = 60)]\nasync fn page(Path(id): Path<u32>) -> String { id.to_string() }\n```"
)]
