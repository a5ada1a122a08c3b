//! # ecsmesh-state
//!
//! The mesh state shared by the controller and the agents: each namespace's
//! effective dtab, each concrete name's endpoint set and each service
//! policy ([`MeshState`]);
//! its wire forms (snapshot and delta, from `ecsmesh-proto`) and the
//! diff/apply pair between them; the concrete names (`/#/ecs/…`,
//! `/#/consul/…`, Linkerd's `/#/io.l5d.consul/…`); and the [`MeshNamer`]
//! that binds dtab paths to endpoint sets.

#[cfg(feature = "json")]
pub mod json;
pub mod meta;
mod namer;
pub mod names;
mod state;

pub use namer::{Bound, MeshNamer};
pub use state::{Endpoint, EndpointSet, MeshState, StateError, delta_is_empty};
