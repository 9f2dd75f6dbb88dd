//! Docker image references, parsed with exactly the rules the operator uses to enforce
//! `allowedRunnerImageHosts` (this is the operator's own parser, shared by path).

#[path = "../../../src/pod/image.rs"]
mod shared;

pub use shared::{DOCKER_HUB, ImageError, ImageReference};
