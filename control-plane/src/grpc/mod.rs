//! The controller's gRPC services: the agent stream, the dtab admin API and
//! the replicas' follow stream.

pub mod admin;
pub mod mesh;
pub mod replica;
