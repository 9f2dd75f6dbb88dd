//! The launcher API: what a run Pod's launcher and the backend say to each other.
//!
//! The launcher (`spacelift-launcher init`, `spacelift-launcher grpc-server`) runs inside the
//! run Pod and talks to the backend over HTTPS, as the run's worker: every request carries a
//! signature made with the worker's own RSA key (the one the operator generated and the backend
//! registered from `worker.register`), scoped to one run stage attempt and valid for a short
//! time. This crate is the contract both sides build on, so they cannot drift:
//!
//! - [`job`]: the documents (the stage's job, log batches, the stage result);
//! - [`signature`]: how a request is signed and checked;
//! - [`layout`]: the paths, ports and environment variables inside the run Pod, and the
//!   API's URL paths;
//! - [`token`]: reading the CA out of the pool token mounted into the Pod.
//!
//! docs/launcher.md describes the whole scheme; docs/protocol.md its version rules.

#![forbid(unsafe_code)]

pub mod job;
pub mod layout;
pub mod signature;
pub mod token;

pub use job::{
    Artifact, Command, Job, LogBatch, LogLine, LogPart, LogStream, RunKind, StageOutcome,
    StageResult, StopStatus, Tool, ToolCache,
};
pub use signature::{Claims, SignatureError, SignedRequest};

/// The launcher API version this crate speaks: the `v1` in every path, and `apiVersion` in
/// every job.
pub const API_VERSION: u32 = 1;
