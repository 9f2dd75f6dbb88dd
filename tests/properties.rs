//! Property tests (proptest, stable toolchain) for everything the operator reads from outside
//! it: pool credentials, backend messages, what a plugin returns, and image references. Each
//! property runs a few hundred cases here (what CI runs); `scripts/fuzz` runs the same
//! properties with many more (see docs/security.md, "Fuzzing"). A failure proptest finds is
//! kept as a named regression test next to its property.

mod support;

#[path = "hooks/support.rs"]
mod hooks_support;

#[path = "properties/credentials.rs"]
mod credentials;
#[path = "properties/images.rs"]
mod images;
#[path = "properties/messages.rs"]
mod messages;
#[path = "properties/plugin_output.rs"]
mod plugin_output;

use proptest::test_runner::Config;

/// `cases` per property, unless `PROPTEST_CASES` asks for more (as `scripts/fuzz` does).
pub fn config(cases: u32) -> Config {
    let configured = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_some() {
        configured
    } else {
        Config {
            cases,
            ..configured
        }
    }
}
