//! Compile-time behaviour of the macros, pinned with trybuild.
//!
//! The `.stderr` files were made with the toolchain named in `PINNED_TOOLCHAIN` (the one
//! installed on the project's machines; none can be downloaded there). Compiler messages change
//! between releases, so on another toolchain the fail cases are skipped (the pass cases
//! still run), except in CI (`CI` set), where a skip fails the test. To refresh them after a toolchain change:
//! `TRYBUILD=overwrite cargo test -p tests --test ui`, then review the diff like code.

use std::process::Command;

const PINNED_TOOLCHAIN: &str = "rustc 1.95.";

fn rustc_version() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    Command::new(rustc)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    let version = rustc_version();
    if version.starts_with(PINNED_TOOLCHAIN) || std::env::var_os("TRYBUILD").is_some() {
        t.compile_fail("ui/fail/*.rs");
    } else {
        // In CI the pinned toolchain is the one installed: a skip there would hide every
        // diagnostic regression, so it fails loudly instead.
        assert!(
            std::env::var_os("CI").is_none(),
            "{version}: not the toolchain the .stderr files were made with ({PINNED_TOOLCHAIN}x): \
             the ui/fail cases would not run in CI"
        );
        // Every fail case would still fail to compile, but its message could differ: skip
        // rather than pin another compiler's wording.
        eprintln!(
            "{version}: not the toolchain the .stderr files were made with ({PINNED_TOOLCHAIN}x); skipping ui/fail"
        );
    }
}
