//! The per-request routing decision on the agent's hot path: identify the
//! request (`/svc/<Host>`), look the decision up in the table's cache (the
//! steady state: bound once per mesh version), pick a union branch and an
//! endpoint, and report the outcome. 50 services, a 20-entry dtab.

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use ecsmesh_agent::config::Identifier;
use ecsmesh_agent::proxy::identify::identify;
use ecsmesh_agent::routes::{RouteTable, TableSettings, Target, choose};
use ecsmesh_dtab::{Dtab, Path};
use ecsmesh_state::{Endpoint, EndpointSet, MeshState};

fn mesh() -> MeshState {
    let mut dtab = String::from("/srv=>/#/ecs/demo;/host=>/srv;/svc=>/host;");
    for i in 0..17 {
        write!(dtab, "/svc/legacy{i}=>/srv/svc{i};").expect("writing to a String");
    }
    let mut state = MeshState {
        dtabs: [(
            "default".to_owned(),
            Arc::new(Dtab::read(&dtab).expect("dtab")),
        )]
        .into(),
        ..MeshState::default()
    };
    for s in 0..50u8 {
        let set: EndpointSet = (1..=3u8)
            .map(|h| {
                Endpoint::new(format!("127.0.{h}.{}:8080", s + 1).parse().expect("addr"))
                    .with_meta("host_ip", format!("127.0.{h}.1"))
            })
            .collect();
        state.sets.insert(
            Path::read(&format!("/#/ecs/demo/svc{s}")).expect("name"),
            Arc::new(set),
        );
    }
    state
}

fn benches(c: &mut Criterion) {
    let settings = TableSettings::new("default".into(), "127.0.1.1".parse().expect("ip"));
    let table = RouteTable::build(1, "e".into(), Arc::new(mesh()), &settings, None);
    let identifier = Identifier::default();
    let request = || {
        http::Request::get("/api/items")
            .header("host", "svc7")
            .body(())
            .expect("request")
            .into_parts()
            .0
    };
    let mut g = c.benchmark_group("agent_routing");
    g.bench_function("identify_decide_pick_cached", |b| {
        let mut parts = request();
        b.iter(|| {
            let name = identify(&identifier, &mut parts).expect("identified");
            let decision = table.decide(black_box(&name), None, None, &settings);
            let route = decision.route.as_ref().expect("routes");
            let dest = choose(route).expect("a destination");
            if let Target::Set { all, .. } = &dest.target {
                all.pick(&[]).expect("an endpoint").success();
            }
        });
    });
    let header = b"/svc/svc7=>/svc/svc8".as_slice();
    g.bench_function("identify_decide_pick_cached_with_l5d_dtab", |b| {
        let mut parts = request();
        b.iter(|| {
            let name = identify(&identifier, &mut parts).expect("identified");
            let decision = table.decide(black_box(&name), None, Some(header), &settings);
            let route = decision.route.as_ref().expect("routes");
            let dest = choose(route).expect("a destination");
            if let Target::Set { all, .. } = &dest.target {
                all.pick(&[]).expect("an endpoint").success();
            }
        });
    });
    g.bench_function("bind_uncached_new_table", |b| {
        let name = Path::read("/svc/svc7").expect("path");
        b.iter(|| {
            // A fresh table each time: the cost of the first request per
            // name after a mesh update.
            let fresh = RouteTable::build(
                2,
                "e".into(),
                Arc::clone(&table.mesh),
                &settings,
                Some(&table),
            );
            black_box(fresh.decide(&name, None, None, &settings));
        });
    });
    g.finish();
}

criterion_group!(routing, benches);
criterion_main!(routing);
