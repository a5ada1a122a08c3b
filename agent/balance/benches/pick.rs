//! `pick()` + `success()`, single-threaded, over 10 and 100 idle endpoints.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use ecsmesh_agent_balance::{Balancer, BalancerConfig, Endpoint};

fn pick_success(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick_success");
    for n in [10u8, 100] {
        let endpoints: Vec<_> = (0..n)
            .map(|i| Endpoint::new(SocketAddr::from(([10, 0, 0, i], 8080))))
            .collect();
        let balancer = Balancer::new(&endpoints, &BalancerConfig::default(), None).seeded(1);
        group.bench_function(n.to_string(), |b| {
            b.iter(|| {
                balancer
                    .pick(black_box(&[]))
                    .expect("endpoints are live")
                    .success();
            });
        });
    }
    group.finish();
}

criterion_group!(benches, pick_success);
criterion_main!(benches);
