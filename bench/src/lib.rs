//! Benchmark tools for ecsmesh (see `bench/README.md`):
//! - `bench-upstream`: an HTTP/1.1 server answering `/64` and `/4096` with
//!   bodies of that size, on one thread — the same upstream for every
//!   system under test (with `--count`, it also counts what it served:
//!   the cross-zone rows);
//! - `bench-load`: an open-loop, constant-rate load generator that measures
//!   latency from each request's scheduled start (so a stall is charged to
//!   every request it delays, unlike a closed loop);
//! - `bench-snapshot`: writes the agent snapshot the proxy benchmark routes
//!   with (a 20-entry dtab, 50 services; with `--zone-endpoint`, the
//!   cross-zone rows' two services and their policy);
//! - `bench-control`: the control-plane benchmark.
