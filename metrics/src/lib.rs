//! # ecsmesh-metrics
//!
//! `prometheus-client` writes the OpenMetrics text format, whose counter
//! families are named without `_total` in `# HELP`/`# TYPE` and which adds
//! `# UNIT` and `# EOF` lines. Prometheus' own text format (0.0.4) — what
//! `promtool check metrics`, older scrapers and humans expect — names the
//! family as the sample is named. This crate renders a registry in that
//! format, so both binaries serve `text/plain; version=0.0.4`.
//!
//! It also holds what both binaries measure the same way: a lock-free
//! [`histogram::LatencyHistogram`] on one bucket ladder, and the standard
//! `process_*` metrics ([`process::ProcessCollector`]).

pub mod histogram;
pub mod process;

use std::fmt::Write as _;

use prometheus_client::registry::Registry;

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Now, in seconds since the Unix epoch (0 before it).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The registry in the Prometheus text format 0.0.4.
pub fn encode(registry: &Registry) -> String {
    let mut open = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut open, registry);
    to_prometheus_text(&open)
}

/// Converts OpenMetrics text to the Prometheus text format.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        let _ = writeln!(out, "{}", renamed.as_deref().unwrap_or(line));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_as_their_samples() {
        let open = "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests_total{a=\"b\"} 3\n\
                    # HELP x_age_seconds Age.\n# TYPE x_age_seconds gauge\n# UNIT x_age_seconds seconds\nx_age_seconds 1.5\n# EOF\n";
        assert_eq!(
            to_prometheus_text(open),
            "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\nx_requests_total{a=\"b\"} 3\n\
             # HELP x_age_seconds Age.\n# TYPE x_age_seconds gauge\nx_age_seconds 1.5\n"
        );
    }

    #[test]
    fn histograms_and_process_metrics_encode_in_the_text_format() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(process::ProcessCollector::new()));
        let h = histogram::LatencyHistogram::default();
        h.observe(std::time::Duration::from_millis(3));
        registry.sub_registry_with_prefix("x").register_with_unit(
            "latency",
            "Latency.",
            prometheus_client::registry::Unit::Seconds,
            h,
        );
        let text = encode(&registry);
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE process_resident_memory_bytes gauge"),
            "{text}"
        );
        assert!(
            text.contains("x_latency_seconds_bucket{le=\"0.0032\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("x_latency_seconds_bucket{le=\"0.0016\"} 0"),
            "{text}"
        );
        assert!(text.contains("x_latency_seconds_count 1"), "{text}");
        // Cumulative: the bounds above the observation hold it too.
        assert!(
            text.contains("x_latency_seconds_bucket{le=\"0.0064\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("x_latency_seconds_bucket{le=\"+Inf\"} 1"),
            "{text}"
        );
    }
}
