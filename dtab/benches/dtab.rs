//! Parse and delegation costs on the agent's per-request path: a realistic
//! 20-entry namespace dtab, a one-entry `l5d-dtab` override, and binding a
//! `/svc/<host>` path against an endpoint-set namer.

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ecsmesh_dtab::{Dtab, Name, NameTree, Namer, NamerError, Path, bind, delegate};

/// A namespace dtab of the size and shape ECS users run: host-port
/// stripping, per-environment namespaces, cross-DC failover, canaries.
pub const DTAB_20: &str = "\
/consul     => /#/io.l5d.consul/dc1;
/consul-dr  => /#/io.l5d.consul/dc2;
/srv        => /consul | /consul-dr;
/host       => /srv;
/svc        => /host;
/svc/auth   => /srv/auth-v3;
/svc/users  => 9 * /srv/users & 1 * /srv/users-canary;
/svc/orders => /srv/orders-v2 | /srv/orders;
/svc/legacy => !;
/svc/tmp    => ~;
/env/prod   => /svc;
/env/stage  => /srv/stage;
/env/*/admin => /srv/admin;
/http/1.1/* => /svc;
/http/2/*   => /svc;
/grpc       => /svc;
/svc/search => /srv/search-blue | /srv/search-green;
/svc/cart   => /srv/cart;
/svc/pay    => /srv/pay-v2 & /srv/pay-v3;
/svc/world  => /srv/world-v1";

/// Knows `/#/io.l5d.consul/<dc>/<service>` for a fixed set of services.
struct Catalog(HashMap<Path, u32>);

impl Catalog {
    fn new() -> Self {
        let mut m = HashMap::new();
        for (i, svc) in [
            "hello",
            "world-v1",
            "users",
            "users-canary",
            "orders",
            "auth-v3",
            "cart",
            "pay-v2",
            "pay-v3",
        ]
        .iter()
        .enumerate()
        {
            let p = Path::from_strs(["#", "io.l5d.consul", "dc1", svc]).expect("valid");
            m.insert(p, u32::try_from(i).expect("small"));
        }
        Self(m)
    }
}

impl Namer for Catalog {
    type Bound = u32;
    fn lookup(&self, path: &Path) -> Result<NameTree<Name<u32>>, NamerError> {
        // The bound id is the first four elements; the rest is residual.
        Ok(match self.0.get(&path.take(4)) {
            Some(&id) => NameTree::Leaf(Name::Bound(id)),
            None => NameTree::Neg,
        })
    }
}

fn benches(c: &mut Criterion) {
    let dtab = Dtab::read(DTAB_20).expect("bench dtab parses");
    let shown = dtab.to_string();
    let header = "/svc/world => /svc/world-v2";
    let catalog = Catalog::new();

    let mut g = c.benchmark_group("parse");
    g.bench_function("dtab_20_entries", |b| {
        b.iter(|| Dtab::read(black_box(DTAB_20)));
    });
    g.bench_function("l5d_dtab_header", |b| {
        b.iter(|| Dtab::read(black_box(header)));
    });
    g.bench_function("path", |b| {
        b.iter(|| Path::read(black_box("/svc/hello")));
    });
    g.bench_function("show_dtab_20_entries", |b| {
        b.iter(|| black_box(&dtab).to_string());
    });
    g.finish();
    assert_eq!(Dtab::read(&shown).expect("reparses"), dtab);

    let hello = Path::read("/svc/hello").expect("path");
    let users = Path::read("/svc/users/v1/list").expect("path");
    let mut g = c.benchmark_group("delegate");
    g.bench_function("lookup_one_step", |b| {
        b.iter(|| black_box(&dtab).lookup(black_box(&hello)));
    });
    g.bench_function("bind_svc_hello", |b| {
        b.iter(|| bind(black_box(&dtab), black_box(&hello), &catalog));
    });
    g.bench_function("bind_svc_users_union_residual", |b| {
        b.iter(|| bind(black_box(&dtab), black_box(&users), &catalog));
    });
    let with_override = dtab.concat(&Dtab::read(header).expect("header"));
    let world = Path::read("/svc/world").expect("path");
    g.bench_function("bind_with_l5d_dtab_override", |b| {
        b.iter(|| bind(black_box(&with_override), black_box(&world), &catalog));
    });
    g.bench_function("static_delegate_svc_hello", |b| {
        b.iter(|| delegate(black_box(&dtab), black_box(&hello)));
    });
    g.finish();
}

criterion_group!(dtab_benches, benches);
criterion_main!(dtab_benches);
