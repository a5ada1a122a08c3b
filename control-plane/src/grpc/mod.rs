//! The controller's gRPC services: the agent stream, the dtab and policy
//! admin APIs and the replicas' follow stream.

pub mod admin;
pub mod mesh;
pub mod policy;
pub mod replica;
