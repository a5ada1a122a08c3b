//! Power of two choices over peak-EWMA latency (or over requests in
//! flight, or round-robin), with failure accrual (consecutive failures or a
//! success rate) and an optional cap on requests in flight per endpoint.
//!
//! # Weights
//!
//! Endpoints are grouped into classes of equal weight, as Finagle's weighted
//! traffic distribution does in front of Linkerd 1's balancers. A pick draws
//! its first candidate with probability proportional to its weight (so a
//! class gets `weight × live members` of the traffic), and the second
//! candidate uniformly from the same class. Comparing candidates of different
//! weights cannot give proportional shares: with two endpoints of weight 9
//! and 1 both are always the candidates, so a deterministic comparison would
//! send every idle-time request to the heavier one. Within a class the
//! weight is a common factor of the cost, so the cost compared is
//! `peak-EWMA latency × (outstanding + 1)`.
//!
//! # Shared state
//!
//! Per-address state lives in an `Arc` that [`Balancer::new`] hands on to the
//! next balancer built for a surviving address, so latency estimates,
//! accrual state and even the outstanding counts of requests picked from the
//! old balancer carry over.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Random draws tried before scanning every endpoint (Finagle's `maxEffort`).
const MAX_EFFORT: usize = 5;
/// linkerd2's floor on the default RTT: a fresh endpoint must not look free,
/// or it is flooded before its first response.
const MIN_DEFAULT_RTT: Duration = Duration::from_millis(1);
/// Cap on the latency a failure is charged, so that a long-failing endpoint's
/// estimate stays finite and can decay back in reasonable time.
const MAX_FAILURE_PENALTY: f64 = 10.0;
/// Cap on backoffs, so that `now + backoff` cannot overflow an `Instant`.
const MAX_BACKOFF: Duration = Duration::from_hours(24);
/// The largest success-rate window kept (its bits are one allocation per
/// endpoint).
const MAX_WINDOW: u32 = 100_000;

/// How a balancer chooses among eligible endpoints (Linkerd
/// `client.loadBalancer.kind`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// `ewma`: power of two choices, the cheaper by peak-EWMA latency ×
    /// (requests in flight + 1).
    #[default]
    PeakEwma,
    /// `roundRobin`: each endpoint in turn (by weight class when weights differ).
    RoundRobin,
    /// `leastLoaded`: power of two choices, the one with fewer requests in flight.
    LeastRequests,
}

/// Balancer settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BalancerConfig {
    pub strategy: Strategy,
    /// Time constant of the peak-EWMA latency estimate (Linkerd `decayTimeMs`).
    pub decay: Duration,
    /// Latency assumed for an endpoint with no observations yet (at least 1 ms).
    pub default_rtt: Duration,
    pub failure_accrual: AccrualConfig,
    /// Requests in flight per endpoint; an endpoint at the limit is not
    /// picked. 0: no limit.
    pub max_concurrent: u32,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::PeakEwma,
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
            failure_accrual: AccrualConfig::default(),
            max_concurrent: 0,
        }
    }
}

/// Success-rate accrual (Linkerd `io.l5d.successRate`): an endpoint whose
/// last `requests` outcomes hold fewer than `rate` successes is removed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SuccessRateAccrual {
    /// The lowest acceptable share of successes, 0 to 1.
    pub rate: f64,
    /// The window: this many most recent outcomes (at least 1).
    pub requests: u32,
}

/// Failure accrual: consecutive failures (Linkerd
/// `io.l5d.consecutiveFailures`) or, when `success_rate` is set, a success
/// rate over a window of requests instead.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AccrualConfig {
    /// Failures in a row that remove an endpoint; 0 disables accrual.
    pub consecutive_failures: u32,
    /// Replaces `consecutive_failures` when set.
    pub success_rate: Option<SuccessRateAccrual>,
    /// Backoff after the first removal; doubles with each removal in a row.
    pub backoff_min: Duration,
    /// Backoff ceiling (raised to `backoff_min` if below it).
    pub backoff_max: Duration,
    /// Fraction of each backoff added at random (clamped to 0..=1), so that
    /// agents that removed an endpoint together do not probe it together.
    pub jitter: f64,
}

impl Default for AccrualConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            success_rate: None,
            backoff_min: Duration::from_secs(5),
            backoff_max: Duration::from_mins(5),
            jitter: 0.5,
        }
    }
}

/// An address to balance over.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Relative traffic share; anything not finite and positive counts as 1.
    pub weight: f64,
    /// What runs at the address (a hash of the task, say). Statistics carry
    /// over to a new balancer only while it stays the same: a replacement
    /// that reuses an address starts fresh rather than inheriting its
    /// predecessor's latency penalties and removals.
    pub generation: u64,
}

impl Endpoint {
    /// An endpoint of weight 1, generation 0.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            weight: 1.0,
            generation: 0,
        }
    }
}

/// Where failure accrual has an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointState {
    Live,
    /// Out of selection; one probe may be sent from `until` on.
    Removed {
        until: Instant,
    },
    /// A probe request is in flight; nothing else is sent.
    Probing,
}

/// One endpoint's figures, for metrics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EndpointStats {
    pub addr: SocketAddr,
    pub outstanding: u32,
    /// The latency estimate as a pick would see it now (decayed while idle).
    pub ewma_rtt: Duration,
    pub consecutive_failures: u32,
    pub state: EndpointState,
}

/// Sanitised settings, copied into every pick so that a pick outlives its
/// balancer.
#[derive(Clone, Copy, Debug)]
struct Settings {
    strategy: Strategy,
    decay: f64,
    default_rtt: f64,
    failures: u32,
    /// Success-rate accrual: the rate and the window (0: off).
    rate: f64,
    window: u32,
    backoff_min: f64,
    backoff_max: f64,
    jitter: f64,
    max_concurrent: u32,
}

impl Settings {
    fn new(c: &BalancerConfig) -> Self {
        let a = &c.failure_accrual;
        let backoff_min = a.backoff_min.min(MAX_BACKOFF);
        let (rate, window) = match a.success_rate {
            Some(sr) if sr.requests > 0 && !sr.rate.is_nan() => {
                (sr.rate.clamp(0.0, 1.0), sr.requests.min(MAX_WINDOW))
            }
            _ => (0.0, 0),
        };
        Self {
            strategy: c.strategy,
            rate,
            window,
            max_concurrent: c.max_concurrent,
            // A zero decay would divide by zero; a nanosecond forgets as fast.
            decay: c.decay.as_secs_f64().max(1e-9),
            default_rtt: c.default_rtt.max(MIN_DEFAULT_RTT).as_secs_f64(),
            failures: a.consecutive_failures,
            backoff_min: backoff_min.as_secs_f64(),
            backoff_max: a.backoff_max.clamp(backoff_min, MAX_BACKOFF).as_secs_f64(),
            jitter: if a.jitter.is_nan() {
                0.0
            } else {
                a.jitter.clamp(0.0, 1.0)
            },
        }
    }

    /// The backoff after the `removals`-th removal in a row, given a uniform
    /// draw `u` in [0, 1): `backoff_min × 2^(removals−1)` capped at
    /// `backoff_max`, stretched by up to `jitter` of itself; a stretch that
    /// would pass the cap is taken below it instead, so the result always
    /// lies in [backoff_min, backoff_max] and stays jittered at the cap.
    fn backoff(&self, removals: u32, u: f64) -> Duration {
        let exp = i32::try_from(removals.saturating_sub(1).min(64)).unwrap_or(64);
        let base = (self.backoff_min * 2f64.powi(exp)).min(self.backoff_max);
        let spread = base * self.jitter * u;
        let secs = if base + spread <= self.backoff_max {
            base + spread
        } else {
            self.backoff_max - spread
        };
        Duration::from_secs_f64(secs.clamp(self.backoff_min, self.backoff_max))
    }
}

/// Per-address state, shared between balancer generations and picks.
#[derive(Debug)]
struct Node {
    addr: SocketAddr,
    generation: u64,
    outstanding: AtomicU32,
    /// Mirrors `state != Live` so that scans pass live endpoints without
    /// taking their lock.
    held_out: AtomicBool,
    stats: Mutex<Stats>,
    /// The removals counter of the balancers this node belongs to; held here
    /// so that a pick need not clone a counter every request would share.
    removals: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Stats {
    /// Peak-EWMA latency in seconds, as of `stamp`.
    rtt: f64,
    stamp: Instant,
    failures: u32,
    /// Removals since the endpoint was last live-and-succeeding; sets the backoff.
    removals: u32,
    state: EndpointState,
    /// The last outcomes, for success-rate accrual (made on first use).
    outcomes: Option<Outcomes>,
}

/// A ring of the last `size` outcomes as bits (1: success).
#[derive(Debug)]
struct Outcomes {
    bits: Vec<u64>,
    size: u32,
    /// Outcomes recorded, up to `size`.
    filled: u32,
    next: u32,
    successes: u32,
}

impl Outcomes {
    fn new(size: u32) -> Self {
        Self {
            bits: vec![0; usize::try_from(size.div_ceil(64)).unwrap_or_default()],
            size,
            filled: 0,
            next: 0,
            successes: 0,
        }
    }

    fn record(&mut self, success: bool) {
        let word = usize::try_from(self.next / 64).unwrap_or_default();
        let bit = self.next % 64;
        let mask = 1_u64 << bit;
        if self.filled == self.size {
            // The oldest outcome leaves the window.
            if self.bits[word] & mask != 0 {
                self.successes -= 1;
            }
        } else {
            self.filled += 1;
        }
        if success {
            self.bits[word] |= mask;
            self.successes += 1;
        } else {
            self.bits[word] &= !mask;
        }
        self.next = (self.next + 1) % self.size;
    }

    /// Whether a full window holds fewer successes than `rate`.
    fn below(&self, rate: f64) -> bool {
        self.filled == self.size && f64::from(self.successes) < rate * f64::from(self.size)
    }
}

impl Node {
    fn new(
        addr: SocketAddr,
        generation: u64,
        rtt: f64,
        now: Instant,
        removals: Arc<AtomicU64>,
    ) -> Self {
        Self {
            addr,
            generation,
            removals,
            outstanding: AtomicU32::new(0),
            held_out: AtomicBool::new(false),
            stats: Mutex::new(Stats {
                rtt,
                stamp: now,
                failures: 0,
                removals: 0,
                state: EndpointState::Live,
                outcomes: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Stats> {
        // Critical sections cannot leave the stats half-updated, so a panic
        // elsewhere while holding the lock is no reason to stop balancing.
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Stats {
    /// The estimate seen at `now`: it decays toward zero while no response
    /// arrives, so an idle endpoint is tried again sooner or later.
    fn rtt_at(&self, now: Instant, decay: f64) -> f64 {
        let idle = now.saturating_duration_since(self.stamp).as_secs_f64();
        self.rtt * (-idle / decay).exp()
    }

    /// Peak EWMA: a sample above the estimate replaces it at once (react to
    /// slowness immediately); a lower one is blended in with a weight that
    /// grows with the time since the last sample.
    fn observe(&mut self, rtt: f64, now: Instant, decay: f64) {
        if rtt >= self.rtt {
            self.rtt = rtt;
        } else {
            let idle = now.saturating_duration_since(self.stamp).as_secs_f64();
            let keep = (-idle / decay).exp();
            self.rtt = self.rtt * keep + rtt * (1.0 - keep);
        }
        self.stamp = self.stamp.max(now);
    }

    /// Records an outcome in the success-rate window (when that accrual is
    /// on): whether the endpoint is now below its rate.
    fn record(&mut self, success: bool, cfg: &Settings) -> bool {
        if cfg.window == 0 {
            return false;
        }
        let outcomes = match &mut self.outcomes {
            Some(o) if o.size == cfg.window => o,
            slot => slot.insert(Outcomes::new(cfg.window)),
        };
        outcomes.record(success);
        outcomes.below(cfg.rate)
    }
}

/// Members `start..end` of `Balancer::nodes` all have weight `weight`.
#[derive(Clone, Copy, Debug)]
struct Class {
    start: usize,
    end: usize,
    weight: f64,
    /// `weight × members`: the class's share of traffic when all are live.
    total: f64,
}

/// A load balancer over one endpoint set. `Send + Sync`; share it in an `Arc`.
#[derive(Debug)]
pub struct Balancer {
    nodes: Vec<Arc<Node>>,
    classes: Vec<Class>,
    total: f64,
    settings: Settings,
    seed: u64,
    draws: AtomicU64,
    removals: Arc<AtomicU64>,
    /// Round-robin's position.
    next: AtomicUsize,
}

/// One candidate of a pick: an eligible endpoint and its cost.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    idx: usize,
    /// `Some(until)` when the endpoint is removed and due for a probe.
    probe: Option<Instant>,
    cost: f64,
}

impl Balancer {
    /// Builds over `endpoints` (duplicates after the first are ignored),
    /// reusing `previous`'s state for every address it also had: latency
    /// estimate, accrual state, outstanding count, and the removals counter.
    pub fn new(
        endpoints: &[Endpoint],
        config: &BalancerConfig,
        previous: Option<&Balancer>,
    ) -> Self {
        let settings = Settings::new(config);
        let now = Instant::now();
        let removals = previous.map_or_else(Arc::default, |p| Arc::clone(&p.removals));
        let old: HashMap<SocketAddr, &Arc<Node>> = previous
            .map(|p| p.nodes.iter().map(|n| (n.addr, n)).collect())
            .unwrap_or_default();
        let mut seen = HashSet::with_capacity(endpoints.len());
        let mut by_weight: HashMap<u64, usize> = HashMap::new();
        let mut groups: Vec<(f64, Vec<Arc<Node>>)> = Vec::new();
        for e in endpoints {
            if !seen.insert(e.addr) {
                continue;
            }
            let weight = if e.weight.is_finite() && e.weight > 0.0 {
                e.weight
            } else {
                1.0
            };
            let node = old
                .get(&e.addr)
                .filter(|n| n.generation == e.generation)
                .map_or_else(
                    || {
                        Arc::new(Node::new(
                            e.addr,
                            e.generation,
                            settings.default_rtt,
                            now,
                            Arc::clone(&removals),
                        ))
                    },
                    |n| Arc::clone(n),
                );
            match by_weight.entry(weight.to_bits()) {
                Entry::Occupied(g) => groups[*g.get()].1.push(node),
                Entry::Vacant(v) => {
                    v.insert(groups.len());
                    groups.push((weight, vec![node]));
                }
            }
        }
        let mut nodes = Vec::with_capacity(seen.len());
        let mut classes = Vec::with_capacity(groups.len());
        let mut total = 0.0;
        for (weight, members) in groups {
            let start = nodes.len();
            // Summed rather than multiplied by the count: no usize→f64 cast.
            let class_total = members.iter().map(|_| weight).sum::<f64>();
            nodes.extend(members);
            classes.push(Class {
                start,
                end: nodes.len(),
                weight,
                total: class_total,
            });
            total += class_total;
        }
        Self {
            nodes,
            classes,
            total,
            settings,
            seed: fastrand::u64(..),
            draws: AtomicU64::new(0),
            removals,
            next: AtomicUsize::new(0),
        }
    }

    /// Fixes the random seed, making a single-threaded sequence of picks
    /// (and the backoff jitter they draw) reproducible.
    #[must_use]
    pub fn seeded(mut self, seed: u64) -> Self {
        self.seed = seed;
        self.draws = AtomicU64::new(0);
        self
    }

    /// Picks an endpoint not in `exclude`; see [`Balancer::pick_at`].
    pub fn pick(&self, exclude: &[SocketAddr]) -> Option<Pick> {
        self.pick_at(exclude, Instant::now())
    }

    /// Power of two choices at `now` over endpoints not in `exclude`: two
    /// distinct candidates, the cheaper wins. An endpoint removed by failure
    /// accrual is a candidate only once its backoff has passed and no probe
    /// is in flight, and then it wins outright: the pick is its one probe.
    /// `None` when no endpoint is eligible ("no hosts available").
    pub fn pick_at(&self, exclude: &[SocketAddr], now: Instant) -> Option<Pick> {
        if self.nodes.is_empty() {
            return None;
        }
        let mut rng = self.rng();
        if self.settings.strategy == Strategy::RoundRobin {
            return self.pick_round_robin(exclude, now, &mut rng);
        }
        // Sampling by the static weights and rejecting ineligible endpoints
        // gives the weighted choice among eligible ones without a scan.
        for _ in 0..MAX_EFFORT {
            let class = self.draw_class(&mut rng);
            let i = rng.usize(class.start..class.end);
            let Some(first) = self.candidate(i, exclude, now) else {
                continue;
            };
            let mut second = None;
            if class.end - class.start > 1 {
                for _ in 0..MAX_EFFORT {
                    let j = rng.usize(class.start..class.end - 1);
                    second = self.candidate(if j >= i { j + 1 } else { j }, exclude, now);
                    if second.is_some() {
                        break;
                    }
                }
            }
            if let Some(pick) = self.choose(first, second, now, &mut rng) {
                return Some(pick);
            }
        }
        self.pick_scan(exclude, now, &mut rng)
    }

    /// The next eligible endpoint in turn: within a weight class drawn by
    /// weight (all of them when weights are equal), else any.
    fn pick_round_robin(
        &self,
        exclude: &[SocketAddr],
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Option<Pick> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let whole = 0..self.nodes.len();
        let class = if self.classes.len() > 1 {
            let c = self.draw_class(rng);
            c.start..c.end
        } else {
            whole.clone()
        };
        if let Some(pick) = self.round_robin_in(class.clone(), turn, exclude, now, rng) {
            return Some(pick);
        }
        if class == whole {
            return None;
        }
        self.round_robin_in(whole, turn, exclude, now, rng)
    }

    /// The first endpoint of `range` that can be granted, from `turn` on.
    fn round_robin_in(
        &self,
        range: std::ops::Range<usize>,
        turn: usize,
        exclude: &[SocketAddr],
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Option<Pick> {
        let len = range.len();
        (0..len).find_map(|k| {
            let c = self.candidate(range.start + (turn + k) % len, exclude, now)?;
            let pick = self.grant(c, now, rng)?;
            // The turns skipped are used up, or the endpoint after an
            // ineligible one would take its turns too.
            if k > 0 {
                self.next.fetch_add(k, Ordering::Relaxed);
            }
            Some(pick)
        })
    }

    /// Whether an endpoint not in `exclude` is held back only by
    /// `max_concurrent` (so a pick that found none should fail fast rather
    /// than report no hosts).
    pub fn at_capacity(&self, exclude: &[SocketAddr]) -> bool {
        let max = self.settings.max_concurrent;
        max > 0
            && self.nodes.iter().any(|n| {
                !exclude.contains(&n.addr)
                    && !n.held_out.load(Ordering::Acquire)
                    && n.outstanding.load(Ordering::Relaxed) >= max
            })
    }

    /// The exact choice when sampling kept hitting ineligible endpoints.
    fn pick_scan(
        &self,
        exclude: &[SocketAddr],
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Option<Pick> {
        let eligible = |i: usize| self.eligible(i, exclude, now);
        let total: f64 = self
            .classes
            .iter()
            .flat_map(|c| (c.start..c.end).filter(|&i| eligible(i)).map(|_| c.weight))
            .sum();
        if total <= 0.0 {
            return None;
        }
        let mut point = rng.f64() * total;
        let mut first = None;
        'scan: for c in &self.classes {
            for i in (c.start..c.end).filter(|&i| eligible(i)) {
                first = Some((c, i));
                if point < c.weight {
                    break 'scan;
                }
                point -= c.weight;
            }
        }
        let (class, i) = first?;
        let a = self.candidate(i, exclude, now)?;
        let others = (class.start..class.end).filter(|&j| j != i && eligible(j));
        let count = others.clone().count();
        let b = if count == 0 {
            None
        } else {
            let k = rng.usize(..count);
            others.skip(k).find_map(|j| self.candidate(j, exclude, now))
        };
        self.choose(a, b, now, rng)
    }

    /// Whether `i` could be picked now (a cheap check for scans).
    fn eligible(&self, i: usize, exclude: &[SocketAddr], now: Instant) -> bool {
        let node = &self.nodes[i];
        if exclude.contains(&node.addr) || self.full(node) {
            return false;
        }
        if !node.held_out.load(Ordering::Acquire) {
            return true;
        }
        matches!(node.lock().state, EndpointState::Removed { until } if until <= now)
    }

    /// Whether `node` has `max_concurrent` requests in flight.
    fn full(&self, node: &Node) -> bool {
        let max = self.settings.max_concurrent;
        max > 0 && node.outstanding.load(Ordering::Relaxed) >= max
    }

    fn candidate(&self, idx: usize, exclude: &[SocketAddr], now: Instant) -> Option<Candidate> {
        let node = &self.nodes[idx];
        if exclude.contains(&node.addr) || self.full(node) {
            return None;
        }
        let stats = node.lock();
        let probe = match stats.state {
            EndpointState::Live => None,
            EndpointState::Removed { until } if until <= now => Some(until),
            _ => return None,
        };
        let load = f64::from(node.outstanding.load(Ordering::Relaxed)) + 1.0;
        let cost = match self.settings.strategy {
            Strategy::LeastRequests => load,
            Strategy::PeakEwma | Strategy::RoundRobin => {
                stats.rtt_at(now, self.settings.decay) * load
            }
        };
        Some(Candidate { idx, probe, cost })
    }

    /// Grants the better candidate, or the other if the better one's probe
    /// was taken meanwhile by a concurrent pick.
    fn choose(
        &self,
        a: Candidate,
        b: Option<Candidate>,
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Option<Pick> {
        let (best, other) = match b {
            Some(b) if b.probe.is_some() && a.probe.is_none() => (b, Some(a)),
            Some(b) if a.probe.is_none() && b.cost < a.cost => (b, Some(a)),
            _ => (a, b),
        };
        self.grant(best, now, rng)
            .or_else(|| self.grant(other?, now, rng))
    }

    fn grant(&self, c: Candidate, now: Instant, rng: &mut fastrand::Rng) -> Option<Pick> {
        let node = &self.nodes[c.idx];
        let max = self.settings.max_concurrent;
        // The limit is taken atomically: concurrent picks cannot pass it.
        let queued = if max > 0 {
            node.outstanding
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < max).then_some(n + 1)
                })
                .ok()?
        } else {
            node.outstanding.fetch_add(1, Ordering::Relaxed)
        };
        if let Some(until) = c.probe {
            let mut stats = node.lock();
            // Re-checked under the lock: only one pick may turn Removed into Probing.
            if stats.state != (EndpointState::Removed { until }) {
                node.outstanding.fetch_sub(1, Ordering::Relaxed);
                return None;
            }
            stats.state = EndpointState::Probing;
        }
        Some(Pick {
            node: Arc::clone(node),
            settings: self.settings,
            start: now,
            probe: c.probe,
            jitter: rng.f64(),
            finished: false,
            cost: c.cost,
            queued,
        })
    }

    fn draw_class(&self, rng: &mut fastrand::Rng) -> &Class {
        let mut point = rng.f64() * self.total;
        for c in &self.classes {
            if point < c.total {
                return c;
            }
            point -= c.total;
        }
        // Rounding left the point past the end.
        &self.classes[self.classes.len() - 1]
    }

    /// A generator per pick, seeded from a shared counter: lock-free, yet a
    /// fixed seed makes a single-threaded run reproducible.
    fn rng(&self) -> fastrand::Rng {
        let n = self.draws.fetch_add(1, Ordering::Relaxed);
        // SplitMix64, so that consecutive counters give unrelated seeds.
        let mut z = self
            .seed
            .wrapping_add(n.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        fastrand::Rng::with_seed(z ^ (z >> 31))
    }

    /// The endpoints' weights summed (a weight that is not finite and
    /// positive counting as 1, as in picks).
    pub fn total_weight(&self) -> f64 {
        self.total
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Endpoints a pick could return now: live ones plus those due for a probe.
    pub fn available(&self) -> usize {
        self.available_at(Instant::now())
    }

    pub fn available_at(&self, now: Instant) -> usize {
        (0..self.nodes.len())
            .filter(|&i| self.eligible(i, &[], now))
            .count()
    }

    /// The addresses, grouped by weight class, in input order within a class.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// Per-endpoint figures, in [`Balancer::addresses`] order.
    pub fn stats(&self) -> Vec<EndpointStats> {
        self.stats_at(Instant::now())
    }

    pub fn stats_at(&self, now: Instant) -> Vec<EndpointStats> {
        self.nodes
            .iter()
            .map(|n| {
                let s = n.lock();
                EndpointStats {
                    addr: n.addr,
                    outstanding: n.outstanding.load(Ordering::Relaxed),
                    ewma_rtt: Duration::from_secs_f64(s.rtt_at(now, self.settings.decay)),
                    consecutive_failures: s.failures,
                    state: s.state,
                }
            })
            .collect()
    }

    /// Failure-accrual removals so far, counted across the balancers built
    /// from this one (Linkerd `failure_accrual/removals`).
    pub fn removals(&self) -> u64 {
        self.removals.load(Ordering::Relaxed)
    }
}

/// A picked endpoint. It counts as outstanding until it is finished with
/// [`Pick::success`] or [`Pick::failure`], or dropped (a cancelled request:
/// released without touching the statistics).
#[derive(Debug)]
#[must_use = "a pick counts as outstanding until finished or dropped"]
pub struct Pick {
    node: Arc<Node>,
    settings: Settings,
    start: Instant,
    /// `Some(until)` when this pick is the endpoint's probe.
    probe: Option<Instant>,
    /// Uniform draw in [0, 1) for the backoff, should this pick remove the endpoint.
    jitter: f64,
    finished: bool,
    /// The cost the pick compared: latency estimate × (outstanding + 1).
    cost: f64,
    /// Requests outstanding on the endpoint before this one.
    queued: u32,
}

impl Pick {
    pub fn addr(&self) -> SocketAddr {
        self.node.addr
    }

    /// The cost it was picked at (peak-EWMA seconds × (outstanding + 1)):
    /// comparable across balancers sharing a configuration.
    pub fn cost(&self) -> f64 {
        self.cost
    }

    /// Requests the endpoint had outstanding when this one was picked.
    pub fn queued(&self) -> u32 {
        self.queued
    }

    /// Whether this request is the probe of an endpoint removed by failure
    /// accrual (Linkerd `failure_accrual/probes`).
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }

    /// The request succeeded; see [`Pick::success_at`].
    pub fn success(self) {
        self.success_at(Instant::now());
    }

    /// Records the latency since the pick, resets the failure count, and
    /// revives the endpoint if it was removed: any success proves it works,
    /// as Finagle's failure accrual holds.
    pub fn success_at(mut self, now: Instant) {
        self.finished = true;
        let rtt = now.saturating_duration_since(self.start).as_secs_f64();
        let mut s = self.node.lock();
        s.failures = 0;
        if s.state == EndpointState::Live {
            s.observe(rtt, now, self.settings.decay);
            s.record(true, &self.settings);
        } else {
            // A revived endpoint's window starts over.
            s.outcomes = None;
            // The penalties charged while failing steered traffic away; a
            // revived endpoint starts over from what it just showed.
            s.rtt = rtt;
            s.stamp = s.stamp.max(now);
            s.removals = 0;
            s.state = EndpointState::Live;
            self.node.held_out.store(false, Ordering::Release);
        }
    }

    /// The request failed; see [`Pick::failure_at`].
    pub fn failure(self) {
        self.failure_at(Instant::now());
    }

    /// Charges the latency since the pick, raised to twice the current
    /// estimate (so fast failures do not make an endpoint look fast), and
    /// counts a consecutive failure. The threshold removes the endpoint for
    /// a backoff; a failed probe removes it again for a doubled one. Results
    /// of requests picked before a removal change nothing but the figures.
    pub fn failure_at(mut self, now: Instant) {
        self.finished = true;
        let cfg = self.settings;
        let elapsed = now.saturating_duration_since(self.start).as_secs_f64();
        let mut s = self.node.lock();
        let penalty = (2.0 * s.rtt.max(cfg.default_rtt)).min(MAX_FAILURE_PENALTY);
        s.observe(elapsed.max(penalty), now, cfg.decay);
        s.failures = s.failures.saturating_add(1);
        let remove = match s.state {
            EndpointState::Live if cfg.window > 0 => s.record(false, &cfg),
            EndpointState::Live => cfg.failures > 0 && s.failures >= cfg.failures,
            EndpointState::Probing => self.probe.is_some(),
            EndpointState::Removed { .. } => false,
        };
        if remove {
            s.outcomes = None;
            s.removals = s.removals.saturating_add(1);
            s.state = EndpointState::Removed {
                until: now + cfg.backoff(s.removals, self.jitter),
            };
            self.node.held_out.store(true, Ordering::Release);
            self.node.removals.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        if !self.finished
            && let Some(until) = self.probe
        {
            // A cancelled probe proved nothing: let the next request probe.
            let mut s = self.node.lock();
            if s.state == EndpointState::Probing {
                s.state = EndpointState::Removed { until };
            }
        }
        self.node.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
