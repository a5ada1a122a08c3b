//! Test harness pieces shared by ecsmesh's suites: the patched moto server
//! (`tests/harness/moto_ecs.py`, started as a child process on loopback) and
//! ECS topology fixtures built with the real AWS SDK.
#![allow(clippy::missing_panics_doc, clippy::must_use_candidate)]

pub mod ecs;
pub mod faults;
pub mod moto;
