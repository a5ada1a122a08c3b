//! Load balancing for the ecsmesh agent's proxy hot path: pure, synchronous
//! and safe to share between many concurrent requests.
//!
//! - [`Balancer`]: power of two choices over peak-EWMA latency × load (or
//!   over requests in flight, or round-robin: [`Strategy`]), with
//!   per-endpoint failure accrual (consecutive failures, or a success rate
//!   below a floor over a window, remove an endpoint for a jittered
//!   exponential backoff, then one probe request may revive it) and an
//!   optional cap on requests in flight per endpoint.
//! - [`RetryBudget`]: the Finagle/Linkerd token budget that caps retries to a
//!   share of recent traffic plus a per-second reserve.
//! - [`Classifier`]: Linkerd 1's HTTP response classifiers, which decide both
//!   what counts as a failure and whether it may be retried.
//!
//! Every time-dependent operation has an `*_at(…, now: Instant)` form so that
//! callers holding a timestamp avoid a second clock read, and tests drive
//! time without sleeping; the plain forms read [`std::time::Instant::now`].

mod balancer;
mod budget;
mod classify;

pub use balancer::{
    AccrualConfig, Balancer, BalancerConfig, Endpoint, EndpointState, EndpointStats, Pick,
    Strategy, SuccessRateAccrual,
};
pub use budget::{RetryBudget, RetryBudgetConfig};
pub use classify::{Classifier, Outcome};
