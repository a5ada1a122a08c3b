//! The controller's gRPC services: the agent stream and the dtab admin API.

pub mod admin;
pub mod mesh;
