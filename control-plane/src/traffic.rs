//! What the agents report having proxied (their `TrafficSummary` messages),
//! turned into the dashboard's rates, success rates and percentiles.
//!
//! Agents send cumulative counters, and only for services whose counts moved
//! since their previous summary. Each (service, direction) series here is a
//! short history of (arrival time, counts); a rate over the window is the
//! difference between the newest counts and the counts in force at the
//! window's start, divided by the window.
//!
//! What agents send is bounded ([`TrafficLimits`]): services per summary,
//! the length of a name, the distinct names kept across all agents
//! ([`ServiceNames`]), and samples per series (one a second, however often
//! summaries come), so memory and `/api/overview` stay bounded.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use ecsmesh_metrics::histogram::{LATENCY_BUCKETS, quantile};
use ecsmesh_proto::v1 as pb;
use serde::Serialize;

use crate::limits::{MAX_SERVICE_NAME_BYTES, TrafficLimits};

/// Samples of a series closer together than this are merged (the newest
/// one is replaced): the shortest window is 5 s, and a client sending
/// summaries faster must not grow the history.
const MIN_SAMPLE_SPACING: Duration = Duration::from_secs(1);

/// Cumulative counts of one series at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Counts {
    requests: u64,
    successes: u64,
    status_4xx: u64,
    status_5xx: u64,
    latency: Vec<u64>,
}

impl Counts {
    fn from_pb(t: &pb::ServiceTraffic) -> Self {
        let mut latency = t.latency_counts.clone();
        // Summaries from an agent with another bucket ladder cannot be merged.
        latency.resize(LATENCY_BUCKETS, 0);
        Self {
            requests: t.requests,
            successes: t.successes,
            status_4xx: t.status_4xx,
            status_5xx: t.status_5xx,
            latency,
        }
    }

    fn zero() -> Self {
        Self {
            latency: vec![0; LATENCY_BUCKETS],
            ..Self::default()
        }
    }

    /// `self - earlier`; a counter that went down (an agent restart the
    /// start time did not reveal) counts from zero.
    fn since(&self, earlier: &Self) -> Self {
        let d = |a: u64, b: u64| a.checked_sub(b).unwrap_or(a);
        Self {
            requests: d(self.requests, earlier.requests),
            successes: d(self.successes, earlier.successes),
            status_4xx: d(self.status_4xx, earlier.status_4xx),
            status_5xx: d(self.status_5xx, earlier.status_5xx),
            latency: self
                .latency
                .iter()
                .zip(&earlier.latency)
                .map(|(&a, &b)| d(a, b))
                .collect(),
        }
    }

    fn add(&mut self, other: &Self) {
        self.requests += other.requests;
        self.successes += other.successes;
        self.status_4xx += other.status_4xx;
        self.status_5xx += other.status_5xx;
        for (a, b) in self.latency.iter_mut().zip(&other.latency) {
            *a += b;
        }
    }
}

/// One (service, direction) series of one agent.
#[derive(Clone, Debug, Default)]
struct Series {
    samples: VecDeque<(Instant, Counts)>,
}

impl Series {
    /// The change over the `window` ending `now`, and the time it spans
    /// (shorter than the window while the series is younger than it).
    fn change(&self, now: Instant, window: Duration) -> Option<(Counts, Duration)> {
        let (_, latest) = self.samples.back()?;
        let start = now.checked_sub(window)?;
        if let Some((_, base)) = self.samples.iter().rev().find(|(at, _)| *at <= start) {
            return Some((latest.since(base), window));
        }
        let (first_at, first) = self.samples.front()?;
        Some((
            latest.since(first),
            now.saturating_duration_since(*first_at),
        ))
    }

    fn push(&mut self, at: Instant, counts: Counts, keep: Duration) {
        // Counts are cumulative, so a newer sample supersedes the newest
        // one; the one before it stays as the anchor of the spacing.
        let len = self.samples.len();
        if len >= 2
            && at.saturating_duration_since(self.samples[len - 2].0) < MIN_SAMPLE_SPACING
            && let Some(last) = self.samples.back_mut()
        {
            *last = (at, counts);
            return;
        }
        self.samples.push_back((at, counts));
        // Keep one sample at or before the oldest window start we answer for.
        if let Some(start) = at.checked_sub(keep) {
            while self.samples.len() > 1 && self.samples[1].0 <= start {
                self.samples.pop_front();
            }
        }
    }
}

/// The distinct service names kept across all agents, each with the
/// number of agents that hold a series of it.
#[derive(Clone, Debug, Default)]
pub struct ServiceNames {
    held: HashMap<String, usize>,
}

impl ServiceNames {
    /// Takes one more hold on `name`; a name not yet held is admitted only
    /// while fewer than `max` are.
    fn admit(&mut self, name: &str, max: usize) -> bool {
        if let Some(holders) = self.held.get_mut(name) {
            *holders += 1;
            return true;
        }
        if self.held.len() >= max {
            return false;
        }
        self.held.insert(name.to_owned(), 1);
        true
    }

    fn release(&mut self, name: &str) {
        if let Some(holders) = self.held.get_mut(name) {
            *holders -= 1;
            if *holders == 0 {
                self.held.remove(name);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// Services a summary lost to the bounds, by bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Past `max_summary_services` in the summary.
    pub summary_limit: u64,
    /// New names while `max_services` were held.
    pub service_limit: u64,
    /// Names longer than [`MAX_SERVICE_NAME_BYTES`].
    pub name_too_long: u64,
}

/// Everything one agent stream has reported.
#[derive(Clone, Debug, Default)]
pub struct AgentTraffic {
    agent_start_unix: f64,
    /// When the last summary arrived, and the CPU seconds it reported.
    last_summary: Option<(Instant, f64)>,
    /// Outgoing traffic by service: only what applications asked for
    /// counts, so the linker-to-linker hop is not counted twice.
    series: HashMap<String, Series>,
    pub resident_memory_bytes: u64,
    /// CPU use between the last two summaries, in cores (1.0 = one core).
    cpu_cores: Option<f64>,
}

impl AgentTraffic {
    /// Takes in a summary that arrived at `now`, within `limits`; `names`
    /// are the names all agents hold. Returns what the bounds dropped.
    pub fn record(
        &mut self,
        summary: &pb::TrafficSummary,
        now: Instant,
        keep: Duration,
        names: &mut ServiceNames,
        limits: &TrafficLimits,
    ) -> Dropped {
        // Start times are copied, never computed: exact comparison is right.
        #[allow(clippy::float_cmp)]
        let restarted = summary.agent_start_unix != self.agent_start_unix;
        if self.last_summary.is_some() && restarted {
            // The agent restarted: its counters start over.
            self.forget(names);
            *self = Self::default();
        }
        let previous = self.last_summary;
        self.agent_start_unix = summary.agent_start_unix;
        self.last_summary = Some((now, summary.cpu_seconds));
        let taken = summary.services.len().min(limits.max_summary_services);
        let mut dropped = Dropped {
            summary_limit: (summary.services.len() - taken) as u64,
            ..Dropped::default()
        };
        for t in summary.services[..taken]
            .iter()
            .filter(|t| t.direction == "outgoing")
        {
            if t.service.len() > MAX_SERVICE_NAME_BYTES {
                dropped.name_too_long += 1;
                continue;
            }
            if !self.series.contains_key(&t.service)
                && !names.admit(&t.service, limits.max_services)
            {
                dropped.service_limit += 1;
                continue;
            }
            let series = self.series.entry(t.service.clone()).or_default();
            // A series first seen after the stream's first summary (which
            // carries every series) started from zero since the previous one.
            if series.samples.is_empty()
                && let Some((previous, _)) = previous
            {
                series.push(previous, Counts::zero(), keep);
            }
            series.push(now, Counts::from_pb(t), keep);
        }
        self.resident_memory_bytes = summary.resident_memory_bytes;
        if let Some((at, cpu)) = previous {
            let dt = now.saturating_duration_since(at).as_secs_f64();
            self.cpu_cores = (dt > 0.0).then(|| (summary.cpu_seconds - cpu).max(0.0) / dt);
        }
        dropped
    }

    /// Releases this agent's hold on its names (it disconnected or restarted).
    pub fn forget(&self, names: &mut ServiceNames) {
        for name in self.series.keys() {
            names.release(name);
        }
    }

    /// CPU use between the last two summaries, in cores (1.0 = one core).
    pub fn cpu_cores(&self) -> Option<f64> {
        self.cpu_cores
    }

    /// Each outgoing service's change over the window.
    fn outgoing(
        &self,
        now: Instant,
        window: Duration,
    ) -> impl Iterator<Item = (&str, Counts, Duration)> {
        self.series.iter().filter_map(move |(service, s)| {
            let (c, span) = s.change(now, window)?;
            Some((service.as_str(), c, span))
        })
    }
}

/// Rates and percentiles of some traffic over a window.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Stats {
    pub requests_per_second: f64,
    /// Successes / requests; `None` with no requests.
    pub success_rate: Option<f64>,
    pub status_4xx_per_second: f64,
    pub status_5xx_per_second: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Adds up changes that may span different times: the rate uses the
/// longest span (all of them end now).
#[derive(Default)]
struct Accumulator {
    counts: Option<Counts>,
    span: Duration,
}

impl Accumulator {
    fn add(&mut self, c: &Counts, span: Duration) {
        self.counts.get_or_insert_with(Counts::zero).add(c);
        self.span = self.span.max(span);
    }

    fn stats(&self) -> Stats {
        let Some(c) = &self.counts else {
            return Stats::default();
        };
        let secs = self.span.as_secs_f64();
        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
        let per_second = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let ms = |q: f64| quantile(&c.latency, q).map(|s| s * 1000.0);
        #[allow(clippy::cast_precision_loss)]
        let success_rate = (c.requests > 0).then(|| c.successes as f64 / c.requests as f64);
        Stats {
            requests_per_second: per_second(c.requests),
            success_rate,
            status_4xx_per_second: per_second(c.status_4xx),
            status_5xx_per_second: per_second(c.status_5xx),
            p50_ms: ms(0.5),
            p95_ms: ms(0.95),
            p99_ms: ms(0.99),
        }
    }
}

/// The mesh-wide view over a window, from every agent's traffic.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MeshTraffic {
    pub window_seconds: f64,
    pub total: Stats,
    /// By logical service, name order.
    pub services: BTreeMap<String, Stats>,
}

/// The mesh-wide traffic (outgoing sides only: every request enters the
/// mesh through exactly one outgoing listener, while the linker-to-linker
/// hop would count it again), and each agent's own figures, in `agents`'
/// order.
pub fn aggregate<'a>(
    agents: impl IntoIterator<Item = &'a AgentTraffic>,
    now: Instant,
    window: Duration,
) -> (MeshTraffic, Vec<Stats>) {
    let mut total = Accumulator::default();
    let mut services: BTreeMap<String, Accumulator> = BTreeMap::new();
    let mut per_agent = Vec::new();
    for agent in agents {
        let mut own = Accumulator::default();
        for (service, change, span) in agent.outgoing(now, window) {
            total.add(&change, span);
            own.add(&change, span);
            services
                .entry(service.to_owned())
                .or_default()
                .add(&change, span);
        }
        per_agent.push(own.stats());
    }
    let mesh = MeshTraffic {
        window_seconds: window.as_secs_f64(),
        total: total.stats(),
        services: services.into_iter().map(|(k, v)| (k, v.stats())).collect(),
    };
    (mesh, per_agent)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::float_cmp)]
    use super::*;

    fn traffic(service: &str, requests: u64, failures: u64, bucket: usize) -> pb::ServiceTraffic {
        let mut latency = vec![0; LATENCY_BUCKETS];
        latency[bucket] = requests;
        pb::ServiceTraffic {
            service: service.into(),
            direction: "outgoing".into(),
            requests,
            successes: requests - failures,
            status_4xx: 0,
            status_5xx: failures,
            latency_counts: latency,
        }
    }

    fn summary(start: f64, services: Vec<pb::ServiceTraffic>) -> pb::TrafficSummary {
        pb::TrafficSummary {
            agent_start_unix: start,
            services,
            ..Default::default()
        }
    }

    const KEEP: Duration = Duration::from_mins(1);
    const WINDOW: Duration = Duration::from_secs(10);

    #[test]
    fn rates_come_from_the_change_over_the_window() {
        let t0 = Instant::now();
        let mut a = AgentTraffic::default();
        let mut names = ServiceNames::default();
        // 1,000 requests before the stream opened: the baseline, not traffic.
        a.record(
            &summary(1.0, vec![traffic("/svc/a", 1000, 0, 6)]),
            t0,
            KEEP,
            &mut names,
            &TrafficLimits::default(),
        );
        a.record(
            &summary(1.0, vec![traffic("/svc/a", 1100, 10, 6)]),
            t0 + Duration::from_secs(5),
            KEEP,
            &mut names,
            &TrafficLimits::default(),
        );
        // /svc/a unchanged in the next summary (not sent); /svc/b is new.
        a.record(
            &summary(1.0, vec![traffic("/svc/b", 50, 0, 8)]),
            t0 + Duration::from_secs(10),
            KEEP,
            &mut names,
            &TrafficLimits::default(),
        );
        let now = t0 + Duration::from_secs(10);
        let (mesh, per_agent) = aggregate([&a], now, WINDOW);
        let s = &mesh.services["/svc/a"];
        assert_eq!(s.requests_per_second, 10.0); // 100 over 10 s
        assert_eq!(s.success_rate, Some(0.9));
        assert_eq!(s.status_5xx_per_second, 1.0);
        let b = &mesh.services["/svc/b"];
        // New since the previous summary, 5 s ago.
        assert_eq!(b.requests_per_second, 10.0);
        assert_eq!(mesh.total.requests_per_second, 15.0);
        assert_eq!(per_agent[0], mesh.total);
        let p50 = s.p50_ms.unwrap();
        assert!((0.8..=1.6).contains(&p50), "{p50}");

        // Twenty seconds later with no new summary: no traffic in the window.
        let later = now + Duration::from_secs(20);
        let (mesh, _) = aggregate([&a], later, WINDOW);
        assert_eq!(mesh.services["/svc/a"].requests_per_second, 0.0);
        assert_eq!(mesh.services["/svc/a"].success_rate, None);
    }

    #[test]
    fn an_agent_restart_starts_its_counters_over() {
        let t0 = Instant::now();
        let mut a = AgentTraffic::default();
        let mut names = ServiceNames::default();
        a.record(
            &summary(1.0, vec![traffic("/svc/a", 500, 0, 6)]),
            t0,
            KEEP,
            &mut names,
            &TrafficLimits::default(),
        );
        a.record(
            &summary(2.0, vec![traffic("/svc/a", 20, 0, 6)]),
            t0 + Duration::from_secs(5),
            KEEP,
            &mut names,
            &TrafficLimits::default(),
        );
        a.record(
            &summary(2.0, vec![traffic("/svc/a", 70, 0, 6)]),
            t0 + Duration::from_secs(10),
            KEEP,
            &mut names,
            &TrafficLimits::default(),
        );
        let (mesh, _) = aggregate([&a], t0 + Duration::from_secs(10), WINDOW);
        assert_eq!(mesh.services["/svc/a"].requests_per_second, 10.0); // 50 over 5 s
    }

    #[test]
    fn incoming_traffic_is_not_counted_twice() {
        let t0 = Instant::now();
        let mut a = AgentTraffic::default();
        let mut names = ServiceNames::default();
        let mut incoming = traffic("/svc/a", 0, 0, 6);
        incoming.direction = "incoming".into();
        a.record(
            &summary(1.0, vec![traffic("/svc/a", 0, 0, 6), incoming.clone()]),
            t0,
            KEEP,
            &mut names,
            &TrafficLimits::default(),
        );
        incoming.requests = 100;
        a.record(
            &summary(1.0, vec![traffic("/svc/a", 100, 0, 6), incoming]),
            t0 + Duration::from_secs(10),
            KEEP,
            &mut names,
            &TrafficLimits::default(),
        );
        let (mesh, _) = aggregate([&a], t0 + Duration::from_secs(10), WINDOW);
        assert_eq!(mesh.total.requests_per_second, 10.0);
    }

    #[test]
    fn a_summary_is_cut_at_its_service_limit() {
        let limits = TrafficLimits {
            max_summary_services: 3,
            ..TrafficLimits::default()
        };
        let mut names = ServiceNames::default();
        let mut a = AgentTraffic::default();
        let services = (0..5)
            .map(|i| traffic(&format!("/svc/{i}"), 1, 0, 6))
            .collect();
        let dropped = a.record(
            &summary(1.0, services),
            Instant::now(),
            KEEP,
            &mut names,
            &limits,
        );
        assert_eq!(dropped.summary_limit, 2);
        assert_eq!(a.series.len(), 3);
        // A name past the length bound is dropped whatever the limits.
        let long = traffic(&"x".repeat(MAX_SERVICE_NAME_BYTES + 1), 1, 0, 6);
        let dropped = a.record(
            &summary(1.0, vec![long]),
            Instant::now(),
            KEEP,
            &mut names,
            &limits,
        );
        assert_eq!(dropped.name_too_long, 1);
        assert_eq!(names.len(), 3);
    }

    #[test]
    fn distinct_names_are_bounded_across_agents_and_released() {
        let limits = TrafficLimits {
            max_services: 2,
            ..TrafficLimits::default()
        };
        let mut names = ServiceNames::default();
        let (mut a, mut b) = (AgentTraffic::default(), AgentTraffic::default());
        let t0 = Instant::now();
        let s = |names: &[&str]| summary(1.0, names.iter().map(|n| traffic(n, 1, 0, 6)).collect());
        assert_eq!(
            a.record(&s(&["/svc/a", "/svc/b"]), t0, KEEP, &mut names, &limits),
            Dropped::default()
        );
        // b may report the names already held, not a third one.
        let dropped = b.record(&s(&["/svc/a", "/svc/c"]), t0, KEEP, &mut names, &limits);
        assert_eq!(dropped.service_limit, 1);
        assert_eq!(names.len(), 2);
        let (mesh, _) = aggregate([&a, &b], t0, WINDOW);
        assert_eq!(
            mesh.services.keys().collect::<Vec<_>>(),
            ["/svc/a", "/svc/b"]
        );
        // a disconnects: /svc/b is released, /svc/a still held by b.
        a.forget(&mut names);
        assert_eq!(names.len(), 1);
        let dropped = b.record(&s(&["/svc/c"]), t0, KEEP, &mut names, &limits);
        assert_eq!(dropped, Dropped::default());
        // An agent restart releases its names too.
        let restarted = summary(2.0, vec![traffic("/svc/d", 1, 0, 6)]);
        b.record(&restarted, t0, KEEP, &mut names, &limits);
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn fast_summaries_do_not_grow_the_history() {
        let mut names = ServiceNames::default();
        let mut a = AgentTraffic::default();
        let t0 = Instant::now();
        for i in 0..1_000u64 {
            let at = t0 + Duration::from_millis(10 * i);
            a.record(
                &summary(1.0, vec![traffic("/svc/a", i, 0, 6)]),
                at,
                KEEP,
                &mut names,
                &TrafficLimits::default(),
            );
        }
        // 10 s of summaries every 10 ms: about one sample a second.
        let samples = a.series["/svc/a"].samples.len();
        assert!(samples <= 12, "{samples}");
        // The newest counts are kept.
        assert_eq!(a.series["/svc/a"].samples.back().unwrap().1.requests, 999);
    }
}
