//! # ecsmesh-proto
//!
//! The gRPC contracts between ecsmesh's processes, generated from
//! `proto/ecsmesh/v1/*.proto` at build time (pure Rust, no `protoc`):
//! - `Mesh.Stream`: the agent stream (snapshot, then deltas, ACK/NACK);
//! - `DtabAdmin`: the dtab store and playground API;
//! - `PolicyAdmin`: the service policy store and `explain`.
//!
//! The `.proto` files are the source of truth; other languages generate
//! their clients from them (the tests use Python's grpcio).

#[allow(clippy::pedantic, missing_debug_implementations)] // generated code
pub mod v1 {
    tonic::include_proto!("ecsmesh.v1");
}

mod parts;
pub use parts::{PartError, SNAPSHOT_PART_BYTES, SnapshotAssembler, split_snapshot};

/// The largest snapshot an agent accepts, whether as one message (gRPC's
/// limit) or put together from parts ([`SnapshotAssembler`]'s). Large
/// snapshots come in parts of about [`SNAPSHOT_PART_BYTES`], but an endpoint
/// set is never split, and gRPC's default 4 MiB limit would refuse one set
/// of more than ~11,000 endpoints (about 360 bytes each); 256 MiB allows
/// ~700,000.
pub const MAX_SNAPSHOT_BYTES: usize = 256 * 1024 * 1024;

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ecsmesh_descriptor");
