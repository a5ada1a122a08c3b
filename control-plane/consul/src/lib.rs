//! # ecsmesh-consul
//!
//! A small client of Consul's HTTP API, written to Consul's documentation
//! so that it works unchanged against `consul agent -dev`:
//!
//! - discovery: [`Client::catalog_services`], [`Client::health_service`];
//! - KV with compare-and-set: [`Client::kv_get`], [`Client::kv_list`],
//!   [`Client::kv_put`], [`Client::kv_delete`];
//! - sessions and locks: [`Client::session_create`],
//!   [`Client::session_renew`], [`Client::session_destroy`],
//!   [`Client::kv_acquire`], [`Client::kv_release`];
//! - blocking queries: every read takes [`QueryOptions`] (`index`, `wait`)
//!   and returns [`Indexed`] (`X-Consul-Index` and the leader headers);
//!   [`BlockingWatch`] runs the loop by Consul's rules (index resets,
//!   clamping, rate limit, diffing, backoff).
//!
//! Plain HTTP only (hyper 1); the ACL token travels in `X-Consul-Token`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ecsmesh_consul::Error> {
//! use ecsmesh_consul::{BlockingWatch, Client, Config, HealthQuery, WatchConfig};
//! let client = Client::new(Config::default())?;
//! let mut watch = BlockingWatch::new(WatchConfig::default());
//! loop {
//!     let passing = HealthQuery { passing: true, ..HealthQuery::default() };
//!     let entries = watch
//!         .next(|opts| {
//!             let (client, passing) = (&client, &passing);
//!             async move { client.health_service("web", passing, &opts).await }
//!         })
//!         .await?;
//!     println!("web: {} healthy instances", entries.len());
//! }
//! # }
//! ```

mod client;
mod types;
mod watch;

pub use client::{Client, Config, DEFAULT_WAIT, Error, HealthQuery, MAX_WAIT, QueryOptions};
pub use types::{
    Check, HealthStatus, Indexed, KvPair, NewSession, ServiceEntry, SessionBehavior, SessionInfo,
    format_duration, parse_duration,
};
pub use watch::{BlockingWatch, WatchConfig};
