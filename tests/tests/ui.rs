//! Compile-time behaviour of the macros, pinned with trybuild.
//!
//! The `.stderr` files match the toolchain in `rust-toolchain.toml`; after a toolchain
//! change, regenerate them with `TRYBUILD=overwrite cargo test -p tests --test ui` and review
//! the diff like code.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}
