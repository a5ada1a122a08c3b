//! [`BlockingWatch`]: a blocking-query loop that follows Consul's rules
//! for them, so callers only see real changes.
//!
//! - The index sent back is the last `X-Consul-Index`, clamped to at least
//!   1: an index of 0 would make every call return at once (a busy loop).
//! - An index lower than the previous one (a snapshot restore, a KV
//!   tombstone reaped, an upgrade) resets the loop: the next call is a
//!   plain read, and blocking resumes from the index it returns.
//! - Calls are rate-limited by a token bucket (a burst of
//!   [`WatchConfig::burst`], then one per [`WatchConfig::min_interval`]):
//!   a long poll that returns a change is never delayed, while a loop that
//!   keeps returning at once (churn, or a server bug) degrades to polling.
//! - An answer equal to the last one yielded (a timeout at `wait`, an
//!   idempotent write, any spurious wake-up) is not yielded.
//! - A failed call (Consul down, a 5xx, a timeout, a missing index header)
//!   is retried after a jittered exponential backoff; after
//!   [`WatchConfig::max_retries`] failures in a row, [`BlockingWatch::next`]
//!   returns the error and the caller keeps its last state. The index and
//!   the last value survive the failure.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::client::{Error, QueryOptions};
use crate::types::Indexed;

/// How a [`BlockingWatch`] paces its calls.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// `?wait=` of each blocking call.
    pub wait: Duration,
    /// `?dc=` of each call (`None`: the client's).
    pub datacenter: Option<String>,
    /// Once the burst is spent, the shortest time between two calls.
    pub min_interval: Duration,
    /// Calls allowed back to back before `min_interval` applies.
    pub burst: u32,
    /// First retry delay after a failed call; it doubles per failure.
    pub retry_base: Duration,
    /// The longest retry delay.
    pub retry_max: Duration,
    /// Failed calls in a row before [`BlockingWatch::next`] gives up.
    pub max_retries: u32,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            wait: Duration::from_mins(5),
            datacenter: None,
            min_interval: Duration::from_secs(1),
            burst: 2,
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            max_retries: 5,
        }
    }
}

/// The state of one blocking-query loop: its index, the last value it
/// yielded, its rate limiter and its backoff.
#[derive(Debug)]
pub struct BlockingWatch<T> {
    config: WatchConfig,
    /// `None`: the next call reads without blocking (first call, or reset).
    index: Option<u64>,
    last: Option<T>,
    /// Token bucket: tokens available as of `refilled`.
    tokens: f64,
    refilled: Instant,
    /// Failed calls in a row; no call before `retry_at`.
    failures: u32,
    retry_at: Option<Instant>,
    resets: u64,
}

impl<T: Clone + PartialEq> BlockingWatch<T> {
    pub fn new(config: WatchConfig) -> Self {
        Self {
            tokens: f64::from(config.burst.max(1)),
            refilled: Instant::now(),
            config,
            index: None,
            last: None,
            failures: 0,
            retry_at: None,
            resets: 0,
        }
    }

    /// The index the next call will block on (`None`: it will not block).
    pub fn index(&self) -> Option<u64> {
        self.index
    }

    /// The last value yielded.
    pub fn last(&self) -> Option<&T> {
        self.last.as_ref()
    }

    /// How many times the index went backwards and the loop was reset.
    pub fn resets(&self) -> u64 {
        self.resets
    }

    /// Failed calls since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Calls `fetch` until it answers something other than the last value
    /// yielded, and returns that (the first call's answer is always new).
    /// Each call gets the options to send: index, wait, datacenter.
    ///
    /// Cancel-safe: dropping the future between calls loses nothing.
    pub async fn next<F, Fut>(&mut self, mut fetch: F) -> Result<T, Error>
    where
        F: FnMut(QueryOptions) -> Fut,
        Fut: Future<Output = Result<Indexed<T>, Error>>,
    {
        let mut failed = 0;
        loop {
            self.pace().await;
            let opts = QueryOptions {
                index: self.index,
                wait: Some(self.config.wait),
                datacenter: self.config.datacenter.clone(),
                consistent: false,
            };
            match fetch(opts).await {
                Ok(answer) => {
                    self.failures = 0;
                    self.retry_at = None;
                    self.observe_index(answer.index);
                    if self.last.as_ref() != Some(&answer.value) {
                        self.last = Some(answer.value.clone());
                        return Ok(answer.value);
                    }
                }
                Err(error) => {
                    self.failures = self.failures.saturating_add(1);
                    failed += 1;
                    let delay = self.backoff();
                    tracing::debug!(%error, failures = self.failures, ?delay, "Consul call failed");
                    self.retry_at = Some(Instant::now() + delay);
                    if failed >= self.config.max_retries.max(1) {
                        return Err(Error::GaveUp {
                            attempts: failed,
                            last: Box::new(error),
                        });
                    }
                }
            }
        }
    }

    /// Applies the index rules to an answer's `X-Consul-Index`.
    fn observe_index(&mut self, index: u64) {
        // Never block on 0: it means "do not block".
        let index = index.max(1);
        match self.index {
            Some(previous) if index < previous => {
                tracing::info!(previous, index, "Consul index went backwards; re-reading");
                self.index = None;
                self.resets += 1;
            }
            _ => self.index = Some(index),
        }
    }

    /// Waits for the retry delay, then for a token.
    async fn pace(&mut self) {
        if let Some(at) = self.retry_at {
            tokio::time::sleep_until(at).await;
        }
        let interval = self.config.min_interval.as_secs_f64();
        if interval <= 0.0 {
            return;
        }
        let burst = f64::from(self.config.burst.max(1));
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() / interval;
        self.tokens = (self.tokens + earned).min(burst);
        self.refilled = now;
        if self.tokens < 1.0 {
            let missing = Duration::from_secs_f64((1.0 - self.tokens) * interval);
            tokio::time::sleep(missing).await;
            self.tokens = 1.0;
            self.refilled = Instant::now();
        }
        self.tokens -= 1.0;
    }

    /// Exponential in the failures so far, capped, with half of it jittered.
    fn backoff(&self) -> Duration {
        let exponent = self.failures.saturating_sub(1).min(16);
        let full = self
            .config
            .retry_base
            .saturating_mul(1 << exponent)
            .min(self.config.retry_max);
        full.mul_f64(0.5 + fastrand::f64() / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::unnecessary_wraps)] // the shape fetch returns
    fn answer(value: u32, index: u64) -> Result<Indexed<u32>, Error> {
        Ok(Indexed {
            value,
            index,
            known_leader: true,
            last_contact: Duration::ZERO,
        })
    }

    fn fast() -> WatchConfig {
        WatchConfig {
            wait: Duration::from_secs(1),
            min_interval: Duration::ZERO,
            retry_base: Duration::from_millis(1),
            retry_max: Duration::from_millis(2),
            max_retries: 3,
            ..WatchConfig::default()
        }
    }

    #[tokio::test]
    async fn index_rules_and_diffing() {
        let mut w = BlockingWatch::new(fast());
        let script = std::sync::Mutex::new(vec![
            answer(1, 0), // first read: index 0 is clamped to 1
            answer(1, 5), // spurious: same value
            answer(2, 6), // a change
            answer(2, 3), // backwards: reset
            answer(3, 4), // plain read after the reset
        ]);
        let sent = std::sync::Mutex::new(Vec::new());
        let mut fetch = |o: QueryOptions| {
            sent.lock().unwrap().push(o.index);
            let next = script.lock().unwrap().remove(0);
            async move { next }
        };
        assert_eq!(w.next(&mut fetch).await.unwrap(), 1);
        assert_eq!(w.index(), Some(1));
        assert_eq!(w.next(&mut fetch).await.unwrap(), 2);
        assert_eq!(w.next(&mut fetch).await.unwrap(), 3);
        assert_eq!(w.resets(), 1);
        assert_eq!(
            *sent.lock().unwrap(),
            [None, Some(1), Some(5), Some(6), None]
        );
    }

    #[tokio::test]
    async fn gives_up_after_max_retries_keeping_its_state() {
        let mut w = BlockingWatch::new(fast());
        assert_eq!(w.next(|_| async { answer(7, 9) }).await.unwrap(), 7);
        let err = w
            .next(|_| async {
                Err(Error::MissingIndex {
                    path: "/v1/x".into(),
                })
            })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::GaveUp { attempts: 3, .. }), "{err}");
        assert_eq!(w.last(), Some(&7));
        assert_eq!(w.index(), Some(9));
        assert_eq!(w.next(|_| async { answer(8, 10) }).await.unwrap(), 8);
        assert_eq!(w.failures(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_allows_a_burst_then_one_call_per_interval() {
        let mut w = BlockingWatch::new(WatchConfig {
            min_interval: Duration::from_secs(1),
            burst: 2,
            ..fast()
        });
        let start = Instant::now();
        // Every answer is new and returns at once: a hot loop.
        for v in 1..=5 {
            w.next(|_| async move { answer(v, 1) }).await.unwrap();
        }
        // Two free calls, then three paced ones.
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(3), "{took:?}");
        assert!(took < Duration::from_millis(3100), "{took:?}");
    }
}
