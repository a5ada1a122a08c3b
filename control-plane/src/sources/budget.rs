//! The controller's own budget for ECS and EC2 calls (issue #17).
//!
//! ECS and EC2 meter reads per account and region with token buckets that
//! every tool in the account shares (deploy pipelines, autoscaling, the
//! console). A controller that resyncs as fast as its interval allows can
//! take all of it. So every ECS and EC2 call the controller makes first
//! takes a token from one bucket shared by all its clusters: at most `rate`
//! calls a second on average, `burst` at once. A throttling answer halves
//! the rate (multiplicative decrease, down to `min_rate`); each successful
//! call wins a little of it back (additive increase, up to the configured
//! rate) — TCP's AIMD, so a controller sharing the account with a busy
//! pipeline settles below what the account has left. A throttled resync
//! fails as a whole and the last good view stays: throttling delays
//! convergence, it never changes routing.
//!
//! Metrics: `api_budget_rate` (the current rate), `api_throttles_total`
//! by operation, `api_budget_wait_seconds_total` (time calls waited for a
//! token); calls themselves are in `api_calls_total`.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// The default sustained rate: half of what ECS grants an account for its
/// describe/list reads, leaving the rest to the account's other tools.
pub const DEFAULT_RATE: f64 = 10.0;
/// The rate never falls below this, so a throttled controller still
/// converges (one call every 2 s).
const MIN_RATE: f64 = 0.5;
/// What each successful call adds back to a decreased rate, in calls/s:
/// a halved rate of 10/s is back after ~50 calls (a few resyncs).
const INCREASE_PER_CALL: f64 = 0.1;

/// The bucket's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetSettings {
    /// Calls a second, sustained.
    pub rate: f64,
    /// Calls that may go at once after a quiet period.
    pub burst: f64,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        Self {
            rate: DEFAULT_RATE,
            burst: DEFAULT_RATE,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    /// The current rate (AIMD); at most `settings.rate`.
    rate: f64,
    refilled: Instant,
}

/// One bucket for every ECS and EC2 call the controller makes.
#[derive(Debug)]
pub struct CallBudget {
    settings: BudgetSettings,
    bucket: Mutex<Bucket>,
}

impl CallBudget {
    pub fn new(settings: BudgetSettings) -> Self {
        let settings = BudgetSettings {
            rate: settings.rate.max(MIN_RATE),
            burst: settings.burst.max(1.0),
        };
        Self {
            settings,
            bucket: Mutex::new(Bucket {
                tokens: settings.burst,
                rate: settings.rate,
                refilled: Instant::now(),
            }),
        }
    }

    fn bucket(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.bucket.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a token; returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let started = Instant::now();
        loop {
            let wait = {
                let mut b = self.bucket();
                let now = Instant::now();
                let earned = now.duration_since(b.refilled).as_secs_f64() * b.rate;
                b.tokens = (b.tokens + earned).min(self.settings.burst);
                b.refilled = now;
                if b.tokens >= 1.0 {
                    b.tokens -= 1.0;
                    return started.elapsed();
                }
                Duration::from_secs_f64((1.0 - b.tokens) / b.rate)
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// A call's outcome: a throttle halves the rate, anything else wins a
    /// little back.
    pub fn record(&self, throttled: bool) {
        let mut b = self.bucket();
        b.rate = if throttled {
            (b.rate / 2.0).max(MIN_RATE)
        } else {
            (b.rate + INCREASE_PER_CALL).min(self.settings.rate)
        };
    }

    /// The current rate, calls a second.
    pub fn rate(&self) -> f64 {
        self.bucket().rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn calls_past_the_burst_wait_for_the_rate() {
        let budget = CallBudget::new(BudgetSettings {
            rate: 4.0,
            burst: 2.0,
        });
        let started = Instant::now();
        for _ in 0..10 {
            budget.acquire().await;
        }
        // Two at once, then eight at 4/s.
        let took = started.elapsed().as_secs_f64();
        assert!((1.95..2.1).contains(&took), "{took}");
    }

    #[tokio::test(start_paused = true)]
    async fn throttles_halve_the_rate_and_successes_win_it_back() {
        let budget = CallBudget::new(BudgetSettings {
            rate: 10.0,
            burst: 1.0,
        });
        budget.record(true);
        assert!((budget.rate() - 5.0).abs() < 1e-9);
        for _ in 0..20 {
            budget.record(true);
        }
        assert!(
            (budget.rate() - MIN_RATE).abs() < 1e-9,
            "never below the floor"
        );
        // At the floor, a call every 2 s.
        budget.acquire().await;
        let started = Instant::now();
        budget.acquire().await;
        assert!(started.elapsed() >= Duration::from_millis(1990));
        for _ in 0..1000 {
            budget.record(false);
        }
        assert!(
            (budget.rate() - 10.0).abs() < 1e-9,
            "never above the setting"
        );
    }

    #[test]
    fn settings_are_kept_sane() {
        let budget = CallBudget::new(BudgetSettings {
            rate: 0.0,
            burst: 0.0,
        });
        assert!(budget.rate() >= MIN_RATE);
    }
}
