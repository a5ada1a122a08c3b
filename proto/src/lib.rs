//! # ecsmesh-proto
//!
//! The gRPC contracts between ecsmesh's processes, generated from
//! `proto/ecsmesh/v1/*.proto` at build time (pure Rust, no `protoc`):
//! - `Mesh.Stream`: the agent stream (snapshot, then deltas, ACK/NACK);
//! - `DtabAdmin`: the dtab store and playground API.
//!
//! The `.proto` files are the source of truth; other languages generate
//! their clients from them (the tests use Python's grpcio).

#![allow(clippy::pedantic, missing_debug_implementations)] // generated code

pub mod v1 {
    tonic::include_proto!("ecsmesh.v1");
}

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ecsmesh_descriptor");
