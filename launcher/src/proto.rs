//! The generated gRPC service (`proto/launcher.proto`, package `launcher.v1`).

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("launcher.v1");
