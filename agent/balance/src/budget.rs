//! Retry budgets with Finagle's token arithmetic (Linkerd 1 `retries.budget`
//! and `requeueBudget`).
//!
//! Every request deposits 1000 tokens; a retry withdraws
//! `floor(1000 / percent_can_retry)`; a reserve of `min_retries_per_sec × ttl`
//! withdrawals is always there. Deposits and withdrawals both leave the
//! balance once older than `ttl`, so the reserve refills at
//! `min_retries_per_sec` and retries stay a share of *recent* traffic.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The window is kept in this many slices; an entry leaves the balance
/// between `ttl × (1 − 1/SLICES)` and `ttl` after it was made, as in
/// Finagle's windowed adder.
const SLICES: usize = 10;
/// Tokens an original request deposits (a retry costs `DEPOSIT / percent`).
const DEPOSIT: i64 = 1000;

/// Budget settings (Linkerd `{ttlSecs, minRetriesPerSec, percentCanRetry}`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudgetConfig {
    /// Window over which deposits count; clamped to 1..=60 s as Linkerd requires.
    pub ttl: Duration,
    /// Retries allowed per second regardless of traffic.
    pub min_retries_per_sec: u32,
    /// Retries allowed per request on top of the reserve; clamped to 0..=1000.
    pub percent_can_retry: f64,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(10),
            min_retries_per_sec: 10,
            percent_can_retry: 0.2,
        }
    }
}

/// A retry budget. `Send + Sync`; one per service path, shared in an `Arc`.
#[derive(Debug)]
pub struct RetryBudget {
    deposit: i64,
    withdrawal: i64,
    reserve: i64,
    window: Mutex<Window>,
}

/// A sum over a sliding window kept as a ring of slices.
#[derive(Debug)]
struct Window {
    slices: [i64; SLICES],
    slice: Duration,
    origin: Instant,
    /// Number of the current slice, counted in whole slices since `origin`.
    current: u128,
    sum: i64,
}

impl Window {
    fn advance(&mut self, now: Instant) {
        let at = now.saturating_duration_since(self.origin).as_nanos() / self.slice.as_nanos();
        // A clock read that lost a race with a newer one is taken as now.
        let Some(steps) = at.checked_sub(self.current).filter(|&s| s > 0) else {
            return;
        };
        for k in 1..=steps.min(SLICES as u128) {
            let i = Self::index(self.current + k);
            self.sum = self.sum.saturating_sub(self.slices[i]);
            self.slices[i] = 0;
        }
        self.current = at;
    }

    fn add(&mut self, tokens: i64) {
        let i = Self::index(self.current);
        self.slices[i] = self.slices[i].saturating_add(tokens);
        self.sum = self.sum.saturating_add(tokens);
    }

    fn index(slice: u128) -> usize {
        usize::try_from(slice % SLICES as u128).unwrap_or_default()
    }
}

impl RetryBudget {
    pub fn new(cfg: &RetryBudgetConfig) -> Self {
        Self::new_at(cfg, Instant::now())
    }

    /// A budget whose window starts at `origin`.
    pub fn new_at(cfg: &RetryBudgetConfig, origin: Instant) -> Self {
        let ttl = cfg
            .ttl
            .clamp(Duration::from_secs(1), Duration::from_mins(1));
        let percent = if cfg.percent_can_retry.is_nan() {
            0.0
        } else {
            cfg.percent_can_retry.clamp(0.0, 1000.0)
        };
        // With no share of traffic to earn, a retry costs a single token so
        // that the reserve alone is counted in retries.
        let (deposit, withdrawal) = if percent > 0.0 {
            // In 1..=1e3/percent, finite since percent > 0; `as` saturates.
            #[allow(clippy::cast_possible_truncation)]
            let w = (1000.0 / percent).floor() as i64;
            (DEPOSIT, w.max(1))
        } else {
            (0, 1)
        };
        let reserve = i128::from(cfg.min_retries_per_sec)
            * i128::from(withdrawal)
            * ttl.as_millis().cast_signed()
            / 1000;
        Self {
            deposit,
            withdrawal,
            reserve: i64::try_from(reserve).unwrap_or(i64::MAX),
            window: Mutex::new(Window {
                slices: [0; SLICES],
                slice: ttl / u32::try_from(SLICES).unwrap_or(1),
                origin,
                current: 0,
                sum: 0,
            }),
        }
    }

    fn window(&self, now: Instant) -> std::sync::MutexGuard<'_, Window> {
        // Every update leaves the window consistent; a poisoned lock is usable.
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        w.advance(now);
        w
    }

    /// Records an original request (not a retry).
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    pub fn deposit_at(&self, now: Instant) {
        if self.deposit > 0 {
            self.window(now).add(self.deposit);
        }
    }

    /// Takes the cost of one retry if the balance covers it.
    pub fn try_withdraw(&self) -> bool {
        self.try_withdraw_at(Instant::now())
    }

    pub fn try_withdraw_at(&self, now: Instant) -> bool {
        let mut w = self.window(now);
        if self.reserve.saturating_add(w.sum) < self.withdrawal {
            return false;
        }
        w.add(-self.withdrawal);
        true
    }

    /// Retries the budget would allow now (Linkerd `retries/budget`).
    pub fn balance(&self) -> u64 {
        self.balance_at(Instant::now())
    }

    pub fn balance_at(&self, now: Instant) -> u64 {
        let tokens = self.reserve.saturating_add(self.window(now).sum);
        u64::try_from(tokens / self.withdrawal).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(min: u32, percent: f64) -> (RetryBudget, Instant) {
        let t0 = Instant::now();
        let cfg = RetryBudgetConfig {
            min_retries_per_sec: min,
            percent_can_retry: percent,
            ..Default::default()
        };
        (RetryBudget::new_at(&cfg, t0), t0)
    }

    fn drain(b: &RetryBudget, now: Instant) -> u64 {
        let mut n = 0;
        while b.try_withdraw_at(now) {
            n += 1;
        }
        n
    }

    #[test]
    fn the_reserve_allows_min_retries_per_sec_times_ttl() {
        let (b, t0) = budget(10, 0.2);
        assert_eq!(b.balance_at(t0), 100);
        assert_eq!(drain(&b, t0), 100);
        assert_eq!(b.balance_at(t0), 0);
        // Withdrawals leave the window too: the reserve refills after ttl.
        assert_eq!(b.balance_at(t0 + Duration::from_secs(5)), 0);
        assert_eq!(b.balance_at(t0 + Duration::from_secs(10)), 100);
    }

    #[test]
    fn a_fifth_of_deposits_become_withdrawable() {
        let (b, t0) = budget(0, 0.2);
        assert!(!b.try_withdraw_at(t0));
        for _ in 0..100 {
            b.deposit_at(t0);
        }
        assert_eq!(b.balance_at(t0), 20);
        assert_eq!(drain(&b, t0), 20);
        // 10 requests pay for 2 retries; 4 for none yet.
        for _ in 0..14 {
            b.deposit_at(t0);
        }
        assert_eq!(drain(&b, t0), 2);

        // With the reserve on top.
        let (b, t0) = budget(10, 0.2);
        for _ in 0..50 {
            b.deposit_at(t0);
        }
        assert_eq!(b.balance_at(t0), 110);
    }

    #[test]
    fn deposits_expire_after_ttl() {
        let (b, t0) = budget(0, 0.5);
        let t1 = t0 + Duration::from_millis(2500);
        for _ in 0..10 {
            b.deposit_at(t1);
        }
        assert_eq!(b.balance_at(t1), 5);
        assert_eq!(b.balance_at(t1 + Duration::from_millis(9400)), 5);
        assert_eq!(b.balance_at(t1 + Duration::from_secs(10)), 0);
        assert!(!b.try_withdraw_at(t1 + Duration::from_secs(10)));
        // A long silence clears the whole window.
        b.deposit_at(t1 + Duration::from_secs(11));
        assert_eq!(b.balance_at(t1 + Duration::from_hours(1)), 0);
        // Time going backwards changes nothing.
        assert_eq!(b.balance_at(t0), 0);
    }

    #[test]
    fn degenerate_settings() {
        // Neither reserve nor share: an empty budget.
        let (b, t0) = budget(0, 0.0);
        b.deposit_at(t0);
        assert_eq!((b.balance_at(t0), b.try_withdraw_at(t0)), (0, false));
        // Reserve only: percent 0 (or NaN) deposits nothing.
        let (b, t0) = budget(3, f64::NAN);
        b.deposit_at(t0);
        assert_eq!(drain(&b, t0), 30);
        // Percent at the cap: a retry costs one token.
        let (b, t0) = budget(0, 5000.0);
        b.deposit_at(t0);
        assert_eq!(b.balance_at(t0), 1000);
        // ttl is clamped to 60 s.
        let cfg = RetryBudgetConfig {
            ttl: Duration::from_hours(1),
            ..Default::default()
        };
        assert_eq!(RetryBudget::new(&cfg).balance(), 600);
    }
}
