//! The launcher: the programs inside a run Pod, as one multi-call binary,
//! `spacelift-launcher` (docs/launcher.md):
//!
//! - [`init`] (`spacelift-launcher init`, the `init` container) lays out the workspace;
//! - [`server`] (`spacelift-launcher grpc-server`, the `launcher-grpc` container) is the
//!   worker's localhost gRPC service and the state proxy;
//! - [`worker`] (`spacelift-worker`, the `worker` container, in the runner image) runs the
//!   stage's commands.
//!
//! Only `init` and `launcher-grpc` hold the worker's key and talk to the backend
//! ([`backend`]); the worker reaches the backend only through the gRPC service.

#![forbid(unsafe_code)]

pub mod archive;
pub mod backend;
pub mod cache;
pub mod digest;
pub mod duration;
pub mod identity;
pub mod init;
pub mod logs;
pub mod proto;
pub mod server;
pub mod settings;
pub mod termination;
pub mod worker;

/// A line on stderr about what the launcher itself does (for `kubectl logs`).
pub fn note(text: &str) {
    eprintln!("spacelift-launcher: {text}");
}

/// An error and its sources on one line: `a: b: c`.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        // Some errors repeat their source in their own message.
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}
