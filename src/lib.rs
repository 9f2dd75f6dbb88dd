//! workerpool-operator: runs infrastructure-as-code runs for a remote backend on on-demand Pods.
//!
//! The crate is a library with two thin binaries (`workerpool-operator`, `workerpool-backend`).
//! Modules follow the path of a run: the CRDs describe pools and workers, [`credentials`] and
//! [`protocol`] connect a pool to its backend, [`pod`] builds the run Pod, [`hooks`] lets
//! plugins and policies change or refuse it before it exists, and [`guard`] enforces what the
//! cluster admin allows a run Pod to be on the final Pod.
#![forbid(unsafe_code)]

pub mod backend;
pub mod controller;
pub mod crd;
pub mod credentials;
pub mod guard;
pub mod hooks;
pub mod link;
pub mod manifest;
pub mod operator;
pub mod ops;
pub mod pod;
pub mod protocol;
pub mod render;
