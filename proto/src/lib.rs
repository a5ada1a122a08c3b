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

/// The largest controller message an agent accepts. A snapshot carries the
/// whole mesh (about 360 bytes per endpoint), so gRPC's default 4 MiB limit
/// would refuse meshes past ~11,000 endpoints; 256 MiB allows ~700,000.
pub const MAX_SNAPSHOT_BYTES: usize = 256 * 1024 * 1024;

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ecsmesh_descriptor");
