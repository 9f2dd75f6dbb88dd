//! The hook pipeline with real compiled plugins (built by `plugins/build`), hostile WAT
//! fixtures (tests/fixtures/plugins/) and real regorus. Each hostile case asserts the exact
//! text a user sees, the hook metrics it moves (exactly, read as Prometheus scrapes them),
//! and that the next good run is unaffected.

mod support;

#[path = "hooks/support.rs"]
mod hooks_support;

#[path = "hooks/bounds.rs"]
mod bounds;
#[path = "hooks/examples.rs"]
mod examples;
#[path = "hooks/hostile.rs"]
mod hostile;
#[path = "hooks/registry.rs"]
mod registry;

/// Numbers for docs/plugins.md: `cargo test --test hooks -- --ignored --nocapture measure`.
#[test]
#[ignore = "a measurement, not a test"]
fn measure() {
    hooks_support::measure();
}
