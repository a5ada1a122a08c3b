//! The standard `process_*` metrics (as Prometheus' client libraries name
//! them), read from `/proc/self` at scrape time, plus the uptime.

use std::sync::OnceLock;
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// Linux reports CPU times in clock ticks of `USER_HZ`, which the kernel
/// fixes at 100 for its user-space ABI.
const TICKS_PER_SECOND: f64 = 100.0;

/// The process' resource use at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessStats {
    pub resident_memory_bytes: u64,
    pub virtual_memory_bytes: u64,
    /// User plus system CPU time.
    pub cpu_seconds: f64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub start_time_unix: f64,
    pub uptime_seconds: f64,
}

/// When this process started, by both clocks (fixed at the first call:
/// call [`started`] early in `main` or at metric registration).
fn started() -> &'static (Instant, f64) {
    static STARTED: OnceLock<(Instant, f64)> = OnceLock::new();
    STARTED.get_or_init(|| (Instant::now(), crate::unix_now()))
}

impl ProcessStats {
    /// Reads `/proc/self`; fields that cannot be read stay 0.
    pub fn read() -> Self {
        let (at, unix) = *started();
        let mut stats = Self {
            start_time_unix: unix,
            uptime_seconds: at.elapsed().as_secs_f64(),
            ..Self::default()
        };
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            stats.resident_memory_bytes = status_kib(&status, "VmRSS:") * 1024;
            stats.virtual_memory_bytes = status_kib(&status, "VmSize:") * 1024;
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            stats.cpu_seconds = stat_cpu_seconds(&stat);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            stats.open_fds = dir.count() as u64;
        }
        if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
            stats.max_fds = limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
        stats
    }
}

/// A `/proc/<pid>/status` field given in KiB (`VmRSS:`, `VmHWM:`, ...); 0
/// when absent.
pub fn status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU seconds from a `/proc/<pid>/stat` line; 0 when it
/// cannot be read.
pub fn stat_cpu_seconds(stat: &str) -> f64 {
    // Fields after the parenthesised command name (which may hold spaces):
    // utime and stime are the 14th and 15th of the line.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    #[allow(clippy::cast_precision_loss)] // ticks stay far below 2^52
    let seconds = (ticks(11) + ticks(12)) as f64 / TICKS_PER_SECOND;
    seconds
}

/// Registers it with a registry (unprefixed: these names are standard).
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl ProcessCollector {
    pub fn new() -> Self {
        started();
        Self
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = ProcessStats::read();
        let gauge_f = |v: f64| ConstGauge::new(v);
        let gauge_u = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu",
            "User and system CPU time spent",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?)?;
        for (name, help, value) in [
            (
                "process_resident_memory",
                "Resident memory size",
                s.resident_memory_bytes,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size",
                s.virtual_memory_bytes,
            ),
        ] {
            let g = gauge_u(value);
            g.encode(encoder.encode_descriptor(
                name,
                help,
                Some(&Unit::Bytes),
                g.metric_type(),
            )?)?;
        }
        for (name, help, value) in [
            ("process_open_fds", "Open file descriptors", s.open_fds),
            (
                "process_max_fds",
                "Limit of open file descriptors",
                s.max_fds,
            ),
        ] {
            let g = gauge_u(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        for (name, help, value) in [
            (
                "process_start_time",
                "Start time of the process since the Unix epoch",
                s.start_time_unix,
            ),
            (
                "process_uptime",
                "Time since the process started",
                s.uptime_seconds,
            ),
        ] {
            let g = gauge_f(value);
            g.encode(encoder.encode_descriptor(
                name,
                help,
                Some(&Unit::Seconds),
                g.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = ProcessStats::read();
        assert!(s.resident_memory_bytes > 0);
        assert!(s.open_fds > 0);
        assert!(s.max_fds >= s.open_fds);
        assert!(s.start_time_unix > 1.6e9);
    }
}
