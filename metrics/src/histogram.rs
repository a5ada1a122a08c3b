//! A latency histogram that takes no lock on the request path.
//!
//! `prometheus_client`'s histogram holds a lock for every observation; the
//! agent observes one or two latencies per proxied request, so this one keeps
//! a fixed set of atomic bucket counters instead. The bounds are one fixed
//! ladder ([`LATENCY_BOUNDS`]) for every latency the mesh measures, so agents
//! can ship raw bucket counts to the controller and it can add them up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds, in seconds, of the latency buckets: 25 µs doubling to
/// ~13 s, so sub-millisecond proxy hops and multi-second timeouts both land
/// in a bucket narrow enough to estimate percentiles from.
pub const LATENCY_BOUNDS: [f64; 20] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_2, 0.000_4, 0.000_8, 0.001_6, 0.003_2, 0.006_4, 0.012_8,
    0.025_6, 0.051_2, 0.102_4, 0.204_8, 0.409_6, 0.819_2, 1.638_4, 3.276_8, 6.553_6, 13.107_2,
];

/// Buckets including the last, unbounded one.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS.len() + 1;

#[derive(Debug, Default)]
struct Inner {
    /// Per bucket, not cumulative; the last is `+Inf`.
    counts: [AtomicU64; LATENCY_BUCKETS],
    /// The sum of observations, in nanoseconds (an integer keeps it atomic).
    sum_nanos: AtomicU64,
}

/// A histogram over [`LATENCY_BOUNDS`]; clones share their counts.
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram {
    inner: Arc<Inner>,
}

/// A point-in-time copy of a [`LatencyHistogram`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencySnapshot {
    /// Per bucket, not cumulative; `LATENCY_BUCKETS` entries.
    pub counts: Vec<u64>,
    pub sum_nanos: u64,
}

impl LatencySnapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

impl LatencyHistogram {
    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let bucket = LATENCY_BOUNDS.partition_point(|&bound| bound < secs);
        self.inner.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            counts: self
                .inner
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum_nanos: self.inner.sum_nanos.load(Ordering::Relaxed),
        }
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.snapshot();
        // Per-bucket counts: the encoder accumulates them itself.
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(snapshot.counts.iter().copied())
            .collect();
        #[allow(clippy::cast_precision_loss)] // a sum of latencies is far below 2^52 ns
        let sum = snapshot.sum_nanos as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, snapshot.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The `q` quantile (0..=1) of per-bucket `counts` over [`LATENCY_BOUNDS`],
/// interpolated linearly inside the bucket it falls in, as Prometheus'
/// `histogram_quantile` does. `None` for an empty histogram; a quantile in
/// the `+Inf` bucket is reported as the highest finite bound.
pub fn quantile(counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    #[allow(clippy::cast_precision_loss)] // request counts stay far below 2^52
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &count) in counts.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        let reached = (below + count) as f64;
        if count > 0 && reached >= rank {
            let Some(&upper) = LATENCY_BOUNDS.get(i) else {
                return LATENCY_BOUNDS.last().copied();
            };
            let lower = if i == 0 { 0.0 } else { LATENCY_BOUNDS[i - 1] };
            #[allow(clippy::cast_precision_loss)]
            let into = (rank - below as f64) / count as f64;
            return Some(lower + (upper - lower) * into);
        }
        below += count;
    }
    LATENCY_BOUNDS.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_bucket_whose_bound_covers_them() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(25)); // on the first bound
        h.observe(Duration::from_micros(30));
        h.observe(Duration::from_mins(1)); // past every bound
        let s = h.snapshot();
        assert_eq!(s.counts[0], 1);
        assert_eq!(s.counts[1], 1);
        assert_eq!(s.counts[LATENCY_BUCKETS - 1], 1);
        assert_eq!(s.count(), 3);
        assert_eq!(s.sum_nanos, 25_000 + 30_000 + 60_000_000_000);
    }

    #[test]
    fn quantiles_interpolate_inside_a_bucket() {
        let mut counts = vec![0; LATENCY_BUCKETS];
        // 100 observations between 0.8 ms and 1.6 ms.
        counts[6] = 100;
        let p50 = quantile(&counts, 0.5).unwrap();
        assert!((p50 - 0.0012).abs() < 1e-9, "{p50}");
        assert_eq!(quantile(&counts, 1.0), Some(0.0016));
        assert_eq!(quantile(&[0; LATENCY_BUCKETS], 0.5), None);
        counts[LATENCY_BUCKETS - 1] = 1000;
        assert_eq!(quantile(&counts, 0.99), Some(13.1072));
    }
}
