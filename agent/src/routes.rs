//! The routing table: what the agent routes with at one version of the
//! mesh state — its namespace's dtab, a balancer per endpoint set (all
//! endpoints for the outgoing side; this host's only for the incoming side),
//! and a cache of routing decisions per (logical name, local dtab).
//!
//! A new table is built for every applied snapshot or delta; balancers
//! carry their statistics over by address, and the decision cache starts
//! empty (so a cached decision never outlives the state it was made from).
//!
//! Service policies ([`crate::policy`]) are resolved per table, and each
//! decision carries its service's: a policy change is a new table, so it
//! applies from the next request on. A set has one balancer per distinct
//! [`TargetSettings`] that reaches it: the defaults' for every set, built
//! with the table, and others made when a decision first needs them.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use bytes::Bytes;
use ecsmesh_agent_balance::{Balancer, BalancerConfig, Endpoint as BalancedEndpoint};
use ecsmesh_dtab::{Dentry, Dtab, NameTree, Path, Traced, bind_traced};
use ecsmesh_state::{Bound, EndpointSet, MeshNamer, MeshState};
use http::HeaderValue;
use prometheus_client::metrics::counter::Counter;

use crate::policy::{Defaults, Policies, Policy, TargetKey, TargetSettings};

/// The decision cache's default size in bytes (both halves together).
pub const DEFAULT_DECISION_CACHE_BYTES: usize = 8 << 20;

/// Metadata key of the host an endpoint runs on (ECS endpoints carry it).
pub const HOST_IP_META: &str = "host_ip";

/// Where one leaf of a routing decision sends traffic.
#[derive(Clone, Debug)]
pub struct Dest {
    /// The concrete name (`l5d-dst-client`).
    pub id: Path,
    pub residual: Path,
    pub target: Target,
    /// `id` and `residual` as header values, rendered once per decision
    /// rather than per request.
    pub id_header: Option<HeaderValue>,
    pub residual_header: Option<HeaderValue>,
}

impl Dest {
    fn new(id: Path, residual: Path, target: Target) -> Self {
        let id_header = HeaderValue::from_str(&id.to_string()).ok();
        let residual_header = (!residual.is_empty())
            .then(|| HeaderValue::from_str(&residual.to_string()).ok())
            .flatten();
        Self {
            id,
            residual,
            target,
            id_header,
            residual_header,
        }
    }
}

#[derive(Clone, Debug)]
pub enum Target {
    /// A published endpoint set: every endpoint (but those on draining
    /// hosts while others serve), and those on this host.
    Set {
        all: Arc<Balancer>,
        local: Arc<Balancer>,
        /// The endpoints on draining hosts left out of `all`: picked only
        /// when `all` has nothing left to try (every endpoint tried or
        /// ejected), so that a drain never turns into an outage.
        draining: Arc<Balancer>,
        /// Endpoint address → the host it runs on (for linker-to-linker).
        hosts: Arc<HashMap<SocketAddr, IpAddr>>,
        /// This agent's zone's endpoints and the others', when the set
        /// spans zones and the agent knows its own ([`Zones`]).
        zones: Option<Arc<Zones>>,
    },
    /// A fixed address (`/$/inet/<host>/<port>`): from the base dtab, or
    /// from a request's dtab header where the operator allows it.
    Inet {
        host: String,
        port: u16,
        /// Reached through a request's dtab header: its resolved addresses
        /// are checked against [`is_local`] before connecting.
        from_header: bool,
    },
}

/// A set's endpoints by availability zone, when the agent knows its own:
/// every attempt is counted by (this zone, the endpoint's zone), whether or
/// not zone-aware balancing is on, so the cost of cross-zone traffic shows
/// either way.
///
/// Zone-aware balancing ([`Split`], issue #18), for a set that spans zones:
/// a request's first attempt goes to this agent's zone with probability
/// [`near_share`](Split::near_share), else to the other zones. Retries use
/// the whole set, so a failing zone costs an idempotent request one retry.
///
/// The share keeps the load even when zones are uneven, assuming agents
/// (the callers) are spread evenly over the set's zones, as Envoy's
/// zone-aware rule does with the caller's zone counts: with `n` of `N`
/// endpoints here and `Z` zones, `min(1, Z·n/N)`. Two zones of two endpoints
/// keep every first attempt in the zone; one endpoint here and nine in the
/// other zone send it 20 % of this zone's traffic, i.e. its fair tenth.
///
/// A zone that cannot take the request spills: nothing here is eligible
/// (all ejected), or the endpoint picked here is busy and costs more than
/// [`SPILL_FACTOR`] times one picked elsewhere (peak-EWMA × pending).
#[derive(Debug)]
pub struct Zones {
    /// This agent's zone.
    pub here: Arc<str>,
    /// The zone-aware split; `None` when balancing ignores zones (turned
    /// off, or the set is not in this zone and another).
    pub split: Option<Split>,
    /// Endpoint address → its zone and the requests-by-zone counter
    /// (this zone → that one).
    pub of: HashMap<SocketAddr, (Arc<str>, Counter)>,
}

/// The endpoints in this agent's zone and elsewhere, and the share of
/// first attempts kept here.
#[derive(Debug)]
pub struct Split {
    pub near: Balancer,
    pub far: Balancer,
    pub near_share: f64,
}

/// How much dearer than a far endpoint a busy near one may be before a
/// request leaves the zone.
pub const SPILL_FACTOR: f64 = 2.0;

impl Zones {
    /// The first attempt's endpoint, when balancing is zone-aware.
    pub fn pick(&self) -> Option<ecsmesh_agent_balance::Pick> {
        let s = self.split.as_ref()?;
        if fastrand::f64() >= s.near_share {
            return s.far.pick(&[]).or_else(|| s.near.pick(&[]));
        }
        match s.near.pick(&[]) {
            Some(near) if near.queued() > 0 => match s.far.pick(&[]) {
                Some(far) if far.cost() * SPILL_FACTOR < near.cost() => Some(far),
                _ => Some(near),
            },
            Some(near) => Some(near),
            None => s.far.pick(&[]),
        }
    }

    /// The zone of `addr` (`""` when it published none).
    pub fn zone_of(&self, addr: &SocketAddr) -> &str {
        self.of.get(addr).map_or("", |(z, _)| z)
    }

    /// Counts an attempt to `addr` in the requests-by-zone metric.
    pub fn count(&self, addr: &SocketAddr) {
        if let Some((_, counter)) = self.of.get(addr) {
            counter.inc();
        }
    }
}

/// Why a request cannot be routed; each maps to a status and `l5d-err`.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RouteError {
    #[error("invalid {header} header: {error}")]
    BadDtabHeader {
        header: &'static str,
        error: ecsmesh_dtab::ParseError,
    },
    /// A leaf reached through a request's dtab is a fixed address, and the
    /// operator has not allowed that (`allow_inet_override`).
    #[error(
        "fixed-address override refused: {header} header may not name fixed addresses: it routes to {path} through the dentry {dentry} (request dtabs may only route to the mesh's endpoint sets; the operator allows fixed addresses with allow_inet_override)"
    )]
    ForbiddenOverride {
        header: &'static str,
        path: Path,
        dentry: Dentry,
    },
    /// A fixed address from a request's dtab resolved to a loopback,
    /// link-local or unspecified address (the host itself, the instance
    /// metadata service), and the operator has not allowed that
    /// (`allow_local_inet_override`).
    #[error(
        "local-address override refused: {path} resolves to {addr}, a loopback, link-local or unspecified address, which request dtabs may never reach (the operator allows it with allow_local_inet_override)"
    )]
    ForbiddenLocalAddress { path: Path, addr: IpAddr },
    #[error("binding failed: {0}")]
    Bind(#[from] ecsmesh_dtab::BindError),
    /// The tree is `~`, `!` or `$`, or the balancer has no live endpoint.
    #[error("no hosts are available")]
    NoHosts,
}

/// A cached routing decision for one (logical name, local dtab).
#[derive(Debug)]
pub struct Decision {
    /// The logical name (`l5d-dst-service`, the metrics label), rendered once.
    pub service: Arc<str>,
    pub service_header: Option<HeaderValue>,
    /// The bound tree (no Alt nodes), or why there is none.
    pub route: Result<NameTree<Dest>, RouteError>,
    /// The local dtab to forward as `l5d-ctx-dtab` (canonical form).
    pub local_dtab: Option<Arc<str>>,
    pub local_dtab_header: Option<HeaderValue>,
    /// The service's traffic policy over the agent's defaults.
    pub policy: Arc<Policy>,
}

impl Decision {
    fn new(
        name: &Path,
        route: Result<NameTree<Dest>, RouteError>,
        local_dtab: Option<Arc<str>>,
        policy: Arc<Policy>,
    ) -> Self {
        let service: Arc<str> = Arc::from(name.to_string());
        Self {
            policy,
            service_header: HeaderValue::from_str(&service).ok(),
            service,
            route,
            local_dtab_header: local_dtab
                .as_deref()
                .and_then(|d| HeaderValue::from_str(d).ok()),
            local_dtab,
        }
    }

    /// Bytes this decision holds on the heap, roughly: its strings and
    /// header values, and a fixed share per leaf (the balancers are shared
    /// with the table, not counted).
    pub fn approx_bytes(&self) -> usize {
        const NODE: usize = 64;
        fn tree_bytes(t: &NameTree<Dest>) -> usize {
            match t {
                NameTree::Leaf(d) => {
                    NODE + 2 * (path_bytes(&d.id) + path_bytes(&d.residual))
                        + if let Target::Inet { host, .. } = &d.target {
                            host.len()
                        } else {
                            0
                        }
                }
                NameTree::Neg | NameTree::Fail | NameTree::Empty => NODE,
                NameTree::Alt(ts) => NODE + ts.iter().map(tree_bytes).sum::<usize>(),
                NameTree::Union(bs) => NODE + bs.iter().map(|b| tree_bytes(&b.tree)).sum::<usize>(),
            }
        }
        let route = match &self.route {
            Ok(tree) => tree_bytes(tree),
            Err(e) => NODE + e.to_string().len(),
        };
        NODE + 2 * self.service.len() + 2 * self.local_dtab.as_deref().map_or(0, str::len) + route
    }
}

/// One version of everything the agent routes with.
#[derive(Debug)]
pub struct RouteTable {
    pub version: u64,
    pub epoch: String,
    pub mesh: Arc<MeshState>,
    /// The namespace's dtab (base + stored overrides).
    pub dtab: Arc<Dtab>,
    /// Every policy of this version, resolved over the defaults.
    pub policies: Policies,
    /// Each set's balancers with the default settings.
    balancers: HashMap<Path, Target>,
    /// Balancers with other settings, made as decisions need them (read
    /// without a lock by the incoming side, per request).
    extra: ArcSwap<HashMap<(Path, TargetKey), (TargetSettings, Target)>>,
    /// Decisions without a request dtab, and those with one: apart, so
    /// that requests with ever-new dtab headers only ever evict each other.
    plain: Mutex<DecisionCache>,
    overrides: Mutex<DecisionCache>,
}

/// How a table is built.
#[derive(Clone, Debug)]
pub struct TableSettings {
    pub namespace: String,
    pub host_ip: IpAddr,
    pub balancer: BalancerConfig,
    /// Request dtabs may route to fixed addresses (`/$/inet/…`).
    pub allow_inet_override: bool,
    /// …and those may be loopback, link-local or unspecified addresses.
    pub allow_local_inet_override: bool,
    /// The decision cache's bound in bytes (approximate: see
    /// [`Decision::approx_bytes`]).
    pub decision_cache_bytes: usize,
    /// This agent's availability zone, when known.
    pub availability_zone: Option<Arc<str>>,
    /// Prefer endpoints in this agent's zone ([`Zones`]).
    pub zone_aware: bool,
    pub zone_counters: crate::metrics::ZoneCounters,
    /// Timeouts, retries and classifier where no policy says otherwise.
    pub defaults: Defaults,
}

impl TableSettings {
    /// Settings with the defaults for everything but the host's identity.
    pub fn new(namespace: String, host_ip: IpAddr) -> Self {
        Self {
            namespace,
            host_ip,
            balancer: BalancerConfig::default(),
            allow_inet_override: false,
            allow_local_inet_override: false,
            decision_cache_bytes: DEFAULT_DECISION_CACHE_BYTES,
            availability_zone: None,
            zone_aware: true,
            zone_counters: crate::metrics::ZoneCounters::default(),
            defaults: Defaults::default(),
        }
    }

    /// The balancer settings where no policy says otherwise.
    pub fn default_target(&self) -> TargetSettings {
        TargetSettings {
            balancer: self.balancer,
            zone_aware: self.zone_aware,
        }
    }
}

/// Routing decisions bounded in bytes. When the next one would not fit,
/// the cache starts over: decisions are cheap to remake, and a bound in
/// bytes (not entries) is what keeps a client sending large, ever-new
/// header dtabs from growing the agent's memory.
#[derive(Debug, Default)]
struct DecisionCache {
    map: HashMap<(Path, Bytes), Arc<Decision>>,
    bytes: usize,
}

impl DecisionCache {
    fn get(&self, key: &(Path, Bytes)) -> Option<Arc<Decision>> {
        self.map.get(key).cloned()
    }

    /// Keeps `decision` unless it alone is larger than `max_bytes`.
    fn insert(&mut self, key: (Path, Bytes), decision: Arc<Decision>, max_bytes: usize) {
        let size = decision.approx_bytes() + key.1.len() + path_bytes(&key.0);
        if size > max_bytes {
            return;
        }
        if self.bytes + size > max_bytes {
            self.map = HashMap::new();
            self.bytes = 0;
        }
        if self.map.insert(key, decision).is_none() {
            self.bytes += size;
        }
    }
}

/// Bytes a path holds on the heap, roughly (the labels and their handles).
fn path_bytes(path: &Path) -> usize {
    path.elems()
        .iter()
        .map(|l| l.as_bytes().len() + 32)
        .sum::<usize>()
        + 16
}

impl RouteTable {
    /// An empty table: nothing routes until a snapshot arrives.
    pub fn empty(settings: &TableSettings) -> Self {
        Self {
            version: 0,
            epoch: String::new(),
            mesh: Arc::new(MeshState::default()),
            dtab: Arc::new(Dtab::empty()),
            policies: Policies::build(
                &ecsmesh_policy::PolicySet::default(),
                &settings.defaults,
                settings.default_target(),
                None,
            ),
            balancers: HashMap::new(),
            extra: ArcSwap::default(),
            plain: Mutex::default(),
            overrides: Mutex::default(),
        }
    }

    /// Builds the table for `mesh`, keeping `previous`'s balancer statistics.
    pub fn build(
        version: u64,
        epoch: String,
        mesh: Arc<MeshState>,
        settings: &TableSettings,
        previous: Option<&RouteTable>,
    ) -> Self {
        let dtab = mesh
            .dtab(&settings.namespace)
            .cloned()
            .unwrap_or_else(|| Arc::new(Dtab::empty()));
        let mut balancers = HashMap::with_capacity(mesh.sets.len());
        for (name, set) in &mesh.sets {
            let before = previous.and_then(|p| p.balancers.get(name));
            // A delta replaces only the sets it changes: the others are the
            // same allocation and keep their balancers as they are, so a
            // push costs a rebuild of what changed, not of the whole mesh.
            let unchanged = previous
                .and_then(|p| p.mesh.sets.get(name))
                .is_some_and(|old| Arc::ptr_eq(old, set));
            let target = match before {
                Some(target) if unchanged => target.clone(),
                _ => set_target(set, settings, &settings.default_target(), before),
            };
            balancers.insert(name.clone(), target);
        }
        let policies = Policies::build(
            &mesh.policies,
            &settings.defaults,
            settings.default_target(),
            previous.map(|p| &p.policies),
        );
        let extra = previous.map_or_else(HashMap::new, |p| {
            p.carried_extra(&mesh, &policies, settings)
        });
        Self {
            version,
            epoch,
            mesh,
            dtab,
            policies,
            balancers,
            extra: ArcSwap::from_pointee(extra),
            plain: Mutex::default(),
            overrides: Mutex::default(),
        }
    }

    /// The balancers of `self` with other than the default settings that
    /// the next table keeps: those a policy in it still uses, for sets it
    /// still has (rebuilt, with their statistics, if the set changed).
    fn carried_extra(
        &self,
        mesh: &MeshState,
        policies: &Policies,
        settings: &TableSettings,
    ) -> HashMap<(Path, TargetKey), (TargetSettings, Target)> {
        let mut carried = HashMap::new();
        for ((name, key), (ts, target)) in self.extra.load().iter() {
            let Some(set) = mesh.sets.get(name) else {
                continue;
            };
            if !policies.uses(key) {
                continue;
            }
            let unchanged = self
                .mesh
                .sets
                .get(name)
                .is_some_and(|old| Arc::ptr_eq(old, set));
            let target = if unchanged {
                target.clone()
            } else {
                set_target(set, settings, ts, Some(target))
            };
            carried.insert((name.clone(), *key), (*ts, target));
        }
        carried
    }

    /// Every published set's endpoint counts and failure-accrual removals
    /// (both balancers: every endpoint, and those on this host), then the
    /// removals of the balancers policies made with other settings.
    pub fn clients(&self) -> Vec<crate::metrics::ClientEndpoints> {
        let removals = |target: &Target| match target {
            Target::Set { all, local, .. } => Some(all.removals() + local.removals()),
            Target::Inet { .. } => None,
        };
        let mut clients: Vec<_> = self
            .balancers
            .iter()
            .filter_map(|(name, target)| match target {
                Target::Set { all, local, .. } => Some(crate::metrics::ClientEndpoints {
                    client: name.to_string(),
                    variant: None,
                    total: all.len(),
                    available: all.available(),
                    removals: all.removals() + local.removals(),
                }),
                Target::Inet { .. } => None,
            })
            .collect();
        for ((name, key), (_, target)) in self.extra.load().iter() {
            if let Some(removals) = removals(target) {
                clients.push(crate::metrics::ClientEndpoints {
                    client: name.to_string(),
                    variant: Some(*key),
                    total: 0,
                    available: 0,
                    removals,
                });
            }
        }
        clients
    }

    /// The set's target for `ts`: the table's own for the default
    /// settings, else one made for them (once per table, kept by the next).
    fn target(
        &self,
        name: &Path,
        set: &EndpointSet,
        settings: &TableSettings,
        ts: &TargetSettings,
    ) -> Target {
        if *ts == settings.default_target() {
            return self
                .balancers
                .get(name)
                .cloned()
                .unwrap_or_else(|| set_target(set, settings, ts, None));
        }
        let key = (name.clone(), ts.key());
        if let Some((_, target)) = self.extra.load().get(&key) {
            return target.clone();
        }
        if !self.balancers.contains_key(name) {
            // Not a published set: nothing to keep it for.
            return set_target(set, settings, ts, None);
        }
        let made = set_target(set, settings, ts, None);
        // Two decisions may make it at once: the first one stored wins.
        self.extra.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.entry(key.clone())
                .or_insert_with(|| (*ts, made.clone()));
            map
        });
        self.extra
            .load()
            .get(&key)
            .map_or(made, |(_, target)| target.clone())
    }

    /// The routing decision for `name` with the request's dtab headers
    /// (`l5d-ctx-dtab`, then `l5d-dtab`), cached.
    pub fn decide(
        &self,
        name: &Path,
        ctx_dtab: Option<&[u8]>,
        user_dtab: Option<&[u8]>,
        settings: &TableSettings,
    ) -> Arc<Decision> {
        let key_headers = match (ctx_dtab, user_dtab) {
            (None, None) => Bytes::new(),
            (c, u) => {
                let mut k =
                    Vec::with_capacity(c.map_or(0, <[u8]>::len) + u.map_or(0, <[u8]>::len) + 1);
                k.extend_from_slice(c.unwrap_or_default());
                k.push(0);
                k.extend_from_slice(u.unwrap_or_default());
                Bytes::from(k)
            }
        };
        let cache = if key_headers.is_empty() {
            &self.plain
        } else {
            &self.overrides
        };
        let key = (name.clone(), key_headers);
        if let Some(d) = cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return d;
        }
        let decision = Arc::new(self.decide_uncached(name, ctx_dtab, user_dtab, settings));
        cache.lock().unwrap_or_else(PoisonError::into_inner).insert(
            key,
            Arc::clone(&decision),
            settings.decision_cache_bytes / 2,
        );
        decision
    }

    /// The bytes the decision caches hold (approximately).
    pub fn cached_bytes(&self) -> usize {
        [&self.plain, &self.overrides]
            .iter()
            .map(|c| c.lock().unwrap_or_else(PoisonError::into_inner).bytes)
            .sum()
    }

    fn decide_uncached(
        &self,
        name: &Path,
        ctx_dtab: Option<&[u8]>,
        user_dtab: Option<&[u8]>,
        settings: &TableSettings,
    ) -> Decision {
        let (local, ctx_len) = match local_dtab(ctx_dtab, user_dtab) {
            Ok(local) => local,
            Err(e) => {
                let policy = Arc::clone(self.policies.matching(name));
                return Decision::new(name, Err(e), None, policy);
            }
        };
        let effective;
        let dtab: &Dtab = if local.is_empty() {
            &self.dtab
        } else {
            effective = self.dtab.concat(&local);
            &effective
        };
        // The request's dentries come after the base dtab's: a leaf marked
        // with one of them was reached through a request header.
        let base_len = self.dtab.len();
        let policy = Arc::clone(self.policies.matching(name));
        let route = bind_traced(dtab, name, &MeshNamer::new(&self.mesh), base_len)
            .map_err(RouteError::from)
            .and_then(|tree| {
                if !settings.allow_inet_override
                    && let Some((path, i)) = forbidden_leaf(&tree)
                {
                    let header = if i - base_len < ctx_len {
                        "l5d-ctx-dtab"
                    } else {
                        "l5d-dtab"
                    };
                    return Err(RouteError::ForbiddenOverride {
                        header,
                        path,
                        dentry: dtab.dentries()[i].clone(),
                    });
                }
                Ok(tree.map(&mut |t| self.traced_dest(t, settings, &policy.target)))
            });
        let local_dtab = (!local.is_empty()).then(|| Arc::from(local.to_string()));
        Decision::new(name, route, local_dtab, policy)
    }

    fn traced_dest(
        &self,
        traced: Traced<Bound>,
        settings: &TableSettings,
        ts: &TargetSettings,
    ) -> Dest {
        let mut dest = self.dest(traced.bound, settings, ts);
        if let Target::Inet { from_header, .. } = &mut dest.target {
            *from_header = traced.via.is_some();
        }
        dest
    }

    /// The destination of a bound leaf, balanced with `ts`.
    pub fn dest(&self, bound: Bound, settings: &TableSettings, ts: &TargetSettings) -> Dest {
        match bound {
            Bound::Set {
                id,
                residual,
                endpoints,
            } => {
                // The table holds a balancer for every published set, under
                // its canonical name (aliases map onto it); building one
                // here would only happen if the two ever disagreed.
                let canonical =
                    ecsmesh_state::names::canonical(id.elems()).unwrap_or_else(|| id.clone());
                let target = self.target(&canonical, &endpoints, settings, ts);
                Dest::new(id, residual, target)
            }
            Bound::Inet(inet) => Dest::new(
                inet.id,
                inet.residual,
                Target::Inet {
                    host: inet.host,
                    port: inet.port,
                    from_header: false,
                },
            ),
        }
    }
}

fn set_target(
    set: &EndpointSet,
    settings: &TableSettings,
    ts: &TargetSettings,
    previous: Option<&Target>,
) -> Target {
    let previous = match previous {
        Some(Target::Set {
            all,
            local,
            draining,
            ..
        }) => Some((all, local, draining)),
        _ => None,
    };
    let mut hosts = HashMap::with_capacity(set.len());
    let mut all = Vec::with_capacity(set.len());
    let mut local = Vec::new();
    let mut fallback = Vec::new();
    // The serving endpoints' zones, for the zone split.
    let mut serving_zones = Vec::new();
    // Endpoints on draining hosts serve only when nothing else can. This
    // host's own endpoints all stay in `local`: a request that reaches the
    // incoming side was routed here on purpose.
    let draining = |e: &ecsmesh_state::Endpoint| {
        e.meta
            .get(ecsmesh_state::meta::DRAINING)
            .map(String::as_str)
            == Some("true")
    };
    let others_serve = set.iter().any(|e| !draining(e));
    for e in set.iter() {
        let host = e
            .meta
            .get(HOST_IP_META)
            .and_then(|h| h.parse::<IpAddr>().ok())
            .unwrap_or_else(|| e.addr.ip());
        hosts.insert(e.addr, host);
        let balanced = BalancedEndpoint {
            addr: e.addr,
            weight: e.weight,
            generation: generation(e),
        };
        if host == settings.host_ip {
            local.push(balanced);
        }
        if others_serve && draining(e) {
            fallback.push(balanced);
        } else {
            all.push(balanced);
            let zone = e.meta.get(ecsmesh_state::meta::AVAILABILITY_ZONE);
            serving_zones.push((balanced, zone.map_or("", String::as_str)));
        }
    }
    let all = Balancer::new(&all, &ts.balancer, previous.map(|p| &**p.0));
    let zones = zones(&serving_zones, &all, settings, ts).map(Arc::new);
    Target::Set {
        all: Arc::new(all),
        local: Arc::new(Balancer::new(
            &local,
            &ts.balancer,
            previous.map(|p| &**p.1),
        )),
        draining: Arc::new(Balancer::new(
            &fallback,
            &ts.balancer,
            previous.map(|p| &**p.2),
        )),
        hosts: Arc::new(hosts),
        zones,
    }
}

/// The zone split of `all`'s endpoints ([`Zones`]), when zone-aware
/// balancing is on, this agent knows its zone, the set has endpoints there
/// and spans two zones or more. The near and far balancers share `all`'s
/// per-endpoint state (latency, accrual), so a failure seen by one counts
/// in all.
fn zones(
    serving: &[(BalancedEndpoint, &str)],
    all: &Balancer,
    settings: &TableSettings,
    ts: &TargetSettings,
) -> Option<Zones> {
    let here = settings.availability_zone.as_ref()?;
    let mut of = HashMap::with_capacity(serving.len());
    let (mut near, mut far) = (Vec::new(), Vec::new());
    let mut zones = std::collections::HashSet::new();
    for &(endpoint, zone) in serving {
        zones.insert(zone);
        if zone == &**here {
            near.push(endpoint);
        } else {
            far.push(endpoint);
        }
        let counter = settings.zone_counters.counter(here, zone);
        of.insert(endpoint.addr, (Arc::from(zone), counter));
    }
    let split = (ts.zone_aware && !near.is_empty() && !far.is_empty()).then(|| {
        let near = Balancer::new(&near, &ts.balancer, Some(all));
        let zone_count = u32::try_from(zones.len()).map_or(f64::MAX, f64::from);
        let near_share = (zone_count * near.total_weight() / all.total_weight()).min(1.0);
        Split {
            near,
            far: Balancer::new(&far, &ts.balancer, Some(all)),
            near_share,
        }
    });
    Some(Zones {
        here: Arc::clone(here),
        split,
        of,
    })
}

/// What runs at an endpoint's address (its task): a replacement that
/// reuses the address starts with fresh balancer statistics.
fn generation(e: &ecsmesh_state::Endpoint) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    e.meta.get("task_arn").hash(&mut h);
    h.finish()
}

/// Parses the request's dtab headers (context first, then the user's):
/// the local dtab, and how many of its dentries came from the context.
fn local_dtab(ctx: Option<&[u8]>, user: Option<&[u8]>) -> Result<(Dtab, usize), RouteError> {
    let mut local = Dtab::empty();
    let mut ctx_len = 0;
    for (header, value) in [("l5d-ctx-dtab", ctx), ("l5d-dtab", user)] {
        let Some(value) = value else { continue };
        let text = std::str::from_utf8(value).map_err(|_| RouteError::BadDtabHeader {
            header,
            error: non_utf8_error(value),
        })?;
        let dtab = Dtab::read(text).map_err(|error| RouteError::BadDtabHeader { header, error })?;
        local = local.concat(&dtab);
        if header == "l5d-ctx-dtab" {
            ctx_len = local.len();
        }
    }
    Ok((local, ctx_len))
}

/// The first leaf that a request's dentry led to and that is not one of
/// the mesh's endpoint sets (a fixed address: `/$/inet`, `/$/fixedinet`,
/// or any namer but the mesh's discovery), with that dentry's index.
fn forbidden_leaf(tree: &NameTree<Traced<Bound>>) -> Option<(Path, usize)> {
    match tree {
        NameTree::Leaf(Traced {
            bound: bound @ Bound::Inet(_),
            via: Some(i),
        }) => Some((bound.id().clone(), *i)),
        NameTree::Leaf(_) | NameTree::Neg | NameTree::Fail | NameTree::Empty => None,
        NameTree::Alt(trees) => trees.iter().find_map(forbidden_leaf),
        NameTree::Union(branches) => branches.iter().find_map(|b| forbidden_leaf(&b.tree)),
    }
}

/// Addresses a request's dtab may never reach unless the operator allows
/// it: the host itself (loopback, unspecified — `0.0.0.0` connects to the
/// host too) and link-local ones (the instance metadata service at
/// 169.254.169.254, the ECS task metadata endpoint), IPv4-mapped ones
/// included.
pub fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_local_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_local_v4(v4);
            }
            v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

fn is_local_v4(ip: Ipv4Addr) -> bool {
    ip.is_loopback() || ip.is_link_local() || ip.octets()[0] == 0
}

/// A parse error at the first byte that is not valid UTF-8.
fn non_utf8_error(value: &[u8]) -> ecsmesh_dtab::ParseError {
    let offset = std::str::from_utf8(value)
        .err()
        .map_or(0, |e| e.valid_up_to());
    ecsmesh_dtab::ParseError {
        offset,
        kind: ecsmesh_dtab::ParseErrorKind::Unexpected {
            expected: "UTF-8 text",
            found: ecsmesh_dtab::Found::EndOfInput,
        },
    }
}

/// Picks a leaf: a union chooses a branch at random, by weight.
pub fn choose(tree: &NameTree<Dest>) -> Result<&Dest, RouteError> {
    match tree {
        NameTree::Leaf(d) => Ok(d),
        NameTree::Union(branches) => {
            let total: f64 = branches.iter().map(|b| b.weight.max(0.0)).sum();
            if total <= 0.0 {
                // All-zero weights: equal shares.
                let i = fastrand::usize(..branches.len().max(1));
                return branches
                    .get(i)
                    .map_or(Err(RouteError::NoHosts), |b| choose(&b.tree));
            }
            let mut point = fastrand::f64() * total;
            for b in branches {
                point -= b.weight.max(0.0);
                if point < 0.0 {
                    return choose(&b.tree);
                }
            }
            branches
                .last()
                .map_or(Err(RouteError::NoHosts), |b| choose(&b.tree))
        }
        NameTree::Neg | NameTree::Fail | NameTree::Empty | NameTree::Alt(_) => {
            Err(RouteError::NoHosts)
        }
    }
}

/// The routing table in force, swapped atomically on every update.
#[derive(Debug)]
pub struct Routes {
    current: arc_swap::ArcSwap<RouteTable>,
    pub settings: TableSettings,
}

impl Routes {
    pub fn new(settings: TableSettings) -> Self {
        Self {
            current: arc_swap::ArcSwap::from_pointee(RouteTable::empty(&settings)),
            settings,
        }
    }

    pub fn load(&self) -> Arc<RouteTable> {
        self.current.load_full()
    }

    /// Installs a new mesh state as the routing table.
    pub fn install(&self, version: u64, epoch: String, mesh: Arc<MeshState>) {
        let previous = self.current.load_full();
        let table = RouteTable::build(version, epoch, mesh, &self.settings, Some(&previous));
        self.current.store(Arc::new(table));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn table() -> (RouteTable, TableSettings) {
        let mut settings = TableSettings::new("default".into(), "127.0.1.1".parse().unwrap());
        settings.decision_cache_bytes = 256 << 10;
        let set: EndpointSet = [ecsmesh_state::Endpoint::new(
            "127.0.1.2:80".parse().unwrap(),
        )]
        .into_iter()
        .collect();
        let mesh = MeshState {
            dtabs: [(
                "default".to_owned(),
                Arc::new(Dtab::read("/svc=>/#/ecs/demo").unwrap()),
            )]
            .into(),
            sets: [(Path::read("/#/ecs/demo/world").unwrap(), Arc::new(set))].into(),
            ..MeshState::default()
        };
        let table = RouteTable::build(1, "e".into(), Arc::new(mesh), &settings, None);
        (table, settings)
    }

    #[test]
    fn the_decision_cache_is_bounded_in_bytes() {
        let (table, settings) = table();
        let name = Path::read("/svc/world").unwrap();
        let filler = "/svc/zz=>/svc/yy;".repeat(500);
        for i in 0..200 {
            let dtab = format!("{filler}/svc/n{i}=>/svc/world");
            let d = table.decide(&name, None, Some(dtab.as_bytes()), &settings);
            assert!(d.route.is_ok());
            assert!(table.cached_bytes() <= settings.decision_cache_bytes / 2);
        }
        // Plain decisions keep their own half: the overrides never evict them.
        let plain = table.decide(&name, None, None, &settings);
        for i in 0..50 {
            let dtab = format!("{filler}/svc/m{i}=>/svc/world");
            let _ = table.decide(&name, None, Some(dtab.as_bytes()), &settings);
        }
        assert!(Arc::ptr_eq(
            &plain,
            &table.decide(&name, None, None, &settings)
        ));
    }

    #[test]
    fn a_delta_rebuilds_only_the_sets_it_changes() {
        let settings = TableSettings::new("default".into(), "127.0.1.1".parse().unwrap());
        let set = |port: u16| {
            Arc::new(
                [ecsmesh_state::Endpoint::new(SocketAddr::from((
                    [127, 0, 9, 2],
                    port,
                )))]
                .into_iter()
                .collect::<EndpointSet>(),
            )
        };
        let (a, b) = (
            Path::read("/#/ecs/demo/a").unwrap(),
            Path::read("/#/ecs/demo/b").unwrap(),
        );
        let first = MeshState {
            dtabs: std::collections::BTreeMap::new(),
            sets: [(a.clone(), set(1)), (b.clone(), set(2))].into(),
            ..MeshState::default()
        };
        let mut second = first.clone();
        second.sets.insert(a.clone(), set(3));
        let t1 = RouteTable::build(1, "e".into(), Arc::new(first), &settings, None);
        let t2 = RouteTable::build(2, "e".into(), Arc::new(second), &settings, Some(&t1));
        let all = |t: &RouteTable, name: &Path| match t.balancers.get(name) {
            Some(Target::Set { all, .. }) => Arc::clone(all),
            _ => panic!("no set {name}"),
        };
        assert!(Arc::ptr_eq(&all(&t1, &b), &all(&t2, &b)), "b was rebuilt");
        assert!(!Arc::ptr_eq(&all(&t1, &a), &all(&t2, &a)), "a was not");
        assert_eq!(all(&t2, &a).addresses()[0].port(), 3);
    }

    #[test]
    fn zones_split_a_set_by_the_agents_zone_with_a_fair_share() {
        let mut settings = TableSettings::new("default".into(), "127.0.1.1".parse().unwrap());
        settings.availability_zone = Some(Arc::from("a"));
        let zones_of = |settings: &TableSettings, zones: &[&str]| {
            let set: EndpointSet = zones
                .iter()
                .enumerate()
                .map(|(i, z)| {
                    let addr = SocketAddr::from(([127, 0, 9, 1], 8000 + u16::try_from(i).unwrap()));
                    let e = ecsmesh_state::Endpoint::new(addr);
                    if z.is_empty() {
                        e
                    } else {
                        e.with_meta(ecsmesh_state::meta::AVAILABILITY_ZONE, *z)
                    }
                })
                .collect();
            let mesh = MeshState {
                dtabs: std::collections::BTreeMap::new(),
                sets: [(Path::read("/#/ecs/demo/world").unwrap(), Arc::new(set))].into(),
                ..MeshState::default()
            };
            let table = RouteTable::build(1, "e".into(), Arc::new(mesh), settings, None);
            match table.balancers.values().next() {
                Some(Target::Set { zones, .. }) => zones
                    .as_ref()
                    .and_then(|z| z.split.as_ref())
                    .map(|z| (z.near.len(), z.far.len(), z.near_share)),
                _ => None,
            }
        };
        assert_eq!(
            zones_of(&settings, &["a", "a", "b", "b"]),
            Some((2, 2, 1.0))
        );
        // One of ten here, two zones: a fifth of this zone's first attempts.
        let (near, far, share) = zones_of(
            &settings,
            &["a", "b", "b", "b", "b", "b", "b", "b", "b", "b"],
        )
        .unwrap();
        assert_eq!((near, far), (1, 9));
        assert!((share - 0.2).abs() < 1e-9, "{share}");
        // Three zones, even: all of it stays.
        assert_eq!(
            zones_of(&settings, &["a", "b", "c"]).map(|z| z.2),
            Some(1.0)
        );
        // No split: one zone, none here, or the agent's zone unknown or off.
        assert_eq!(zones_of(&settings, &["a", "a"]), None);
        assert_eq!(zones_of(&settings, &["b", "c"]), None);
        // Endpoints without a zone count as elsewhere.
        assert_eq!(
            zones_of(&settings, &["a", ""]).map(|z| (z.0, z.1)),
            Some((1, 1))
        );
        let mut off = TableSettings::new("default".into(), "127.0.1.1".parse().unwrap());
        off.availability_zone = Some(Arc::from("a"));
        off.zone_aware = false;
        assert_eq!(zones_of(&off, &["a", "b"]), None);
        // Off, attempts are still counted by zone.
        let mesh = MeshState {
            sets: [(
                Path::read("/#/ecs/demo/world").unwrap(),
                Arc::new(
                    [("a", 1u8), ("b", 2)]
                        .iter()
                        .map(|(z, i)| {
                            ecsmesh_state::Endpoint::new(SocketAddr::from(([127, 0, 9, *i], 80)))
                                .with_meta(ecsmesh_state::meta::AVAILABILITY_ZONE, *z)
                        })
                        .collect::<EndpointSet>(),
                ),
            )]
            .into(),
            ..MeshState::default()
        };
        let table = RouteTable::build(1, "e".into(), Arc::new(mesh), &off, None);
        match table.balancers.values().next() {
            Some(Target::Set { zones: Some(z), .. }) => {
                assert!(z.split.is_none() && z.pick().is_none());
                assert_eq!(z.zone_of(&SocketAddr::from(([127, 0, 9, 2], 80))), "b");
            }
            _ => panic!("no zone counters with zone-aware balancing off"),
        }
        let unknown = TableSettings::new("default".into(), "127.0.1.1".parse().unwrap());
        assert_eq!(zones_of(&unknown, &["a", "b"]), None);
    }

    #[test]
    fn draining_endpoints_serve_only_when_nothing_else_can() {
        let settings = TableSettings::new("default".into(), "127.0.1.1".parse().unwrap());
        let endpoint = |addr: &str, draining: bool| {
            let e = ecsmesh_state::Endpoint::new(addr.parse().unwrap());
            if draining {
                e.with_meta(ecsmesh_state::meta::DRAINING, "true")
            } else {
                e
            }
        };
        let total = |eps: Vec<ecsmesh_state::Endpoint>| {
            let mesh = MeshState {
                dtabs: std::collections::BTreeMap::new(),
                sets: [(
                    Path::read("/#/ecs/demo/world").unwrap(),
                    Arc::new(eps.into_iter().collect::<EndpointSet>()),
                )]
                .into(),
                ..MeshState::default()
            };
            let table = RouteTable::build(1, "e".into(), Arc::new(mesh), &settings, None);
            table.clients()[0].total
        };
        assert_eq!(
            total(vec![
                endpoint("127.0.1.2:80", true),
                endpoint("127.0.1.3:80", false),
                endpoint("127.0.1.4:80", true),
            ]),
            1
        );
        assert_eq!(
            total(vec![
                endpoint("127.0.1.2:80", true),
                endpoint("127.0.1.4:80", true)
            ]),
            2,
            "all draining: they still serve"
        );
    }

    fn with_policies(mut mesh: MeshState, entries: &[(&str, &str, u64)]) -> Arc<MeshState> {
        for (prefix, doc, version) in entries {
            mesh.policies.insert(
                Path::read(prefix).unwrap(),
                ecsmesh_policy::Versioned {
                    policy: Arc::new(ecsmesh_policy::ServicePolicy::parse(doc).unwrap()),
                    version: *version,
                },
            );
        }
        Arc::new(mesh)
    }

    fn all_of(d: &Decision) -> Arc<Balancer> {
        match &choose(d.route.as_ref().unwrap()).unwrap().target {
            Target::Set { all, .. } => Arc::clone(all),
            Target::Inet { .. } => panic!("not a set"),
        }
    }

    #[test]
    fn decisions_carry_their_policy_and_a_new_version_takes_effect() {
        let (t1, settings) = table();
        let name = Path::read("/svc/world").unwrap();
        let first = t1.decide(&name, None, None, &settings);
        assert!(first.policy.source.is_none());
        assert_eq!(first.policy.total_timeout, settings.defaults.total_timeout);
        let mesh = with_policies(
            MeshState::clone(&t1.mesh),
            &[("/svc/world", "{timeouts: {total: 250ms}}", 7)],
        );
        let t2 = RouteTable::build(2, "e".into(), mesh, &settings, Some(&t1));
        let second = t2.decide(&name, None, None, &settings);
        assert_eq!(second.policy.total_timeout, Duration::from_millis(250));
        assert_eq!(second.policy.source.as_ref().unwrap().version, 7);
        // Timeouts alone share the set's default balancer.
        assert!(Arc::ptr_eq(&all_of(&first), &all_of(&second)));
    }

    #[test]
    fn each_balancer_setting_gets_its_own_balancer_per_set_kept_across_rebuilds() {
        let (t0, settings) = table();
        let rr = "{balancer: {kind: roundRobin}, max_concurrent_requests: 3}";
        let mesh = with_policies(
            MeshState::clone(&t0.mesh),
            &[
                ("/svc/rr", rr, 1),
                ("/svc/rr2", rr, 2),
                ("/svc/slow", "{timeouts: {total: 1s}}", 3),
            ],
        );
        let t1 = RouteTable::build(1, "e".into(), mesh, &settings, None);
        // Three services reach the world set through a request dtab.
        let via = |t: &RouteTable, svc: &str| {
            let dtab = format!("{svc}=>/#/ecs/demo/world");
            t.decide(
                &Path::read(svc).unwrap(),
                None,
                Some(dtab.as_bytes()),
                &settings,
            )
        };
        let plain = t1.decide(&Path::read("/svc/world").unwrap(), None, None, &settings);
        let (rr_a, rr_b, slow) = (
            via(&t1, "/svc/rr"),
            via(&t1, "/svc/rr2"),
            via(&t1, "/svc/slow"),
        );
        assert!(
            !Arc::ptr_eq(&all_of(&plain), &all_of(&rr_a)),
            "settings differ"
        );
        assert!(
            Arc::ptr_eq(&all_of(&rr_a), &all_of(&rr_b)),
            "same settings share"
        );
        assert!(
            Arc::ptr_eq(&all_of(&plain), &all_of(&slow)),
            "balancer not set"
        );
        // Kept by the next table while the set is unchanged.
        let t2 = RouteTable::build(2, "e".into(), Arc::clone(&t1.mesh), &settings, Some(&t1));
        assert!(Arc::ptr_eq(&all_of(&rr_a), &all_of(&via(&t2, "/svc/rr"))));
        // A changed set rebuilds it, keeping its endpoints' state.
        let held = all_of(&rr_a).pick(&[]).unwrap();
        let mut changed = MeshState::clone(&t2.mesh);
        let mut set = EndpointSet::clone(&changed.sets[&Path::read("/#/ecs/demo/world").unwrap()]);
        set.insert(ecsmesh_state::Endpoint::new(
            "127.0.1.3:80".parse().unwrap(),
        ));
        changed
            .sets
            .insert(Path::read("/#/ecs/demo/world").unwrap(), Arc::new(set));
        let t3 = RouteTable::build(3, "e".into(), Arc::new(changed), &settings, Some(&t2));
        let rebuilt = all_of(&via(&t3, "/svc/rr"));
        assert!(!Arc::ptr_eq(&all_of(&rr_a), &rebuilt));
        assert_eq!(rebuilt.len(), 2);
        assert_eq!(
            rebuilt.stats().iter().map(|s| s.outstanding).sum::<u32>(),
            1
        );
        drop(held);
        // No policy uses the settings any more: not carried.
        let mut gone = MeshState::clone(&t3.mesh);
        gone.policies = ecsmesh_policy::PolicySet::default();
        let t4 = RouteTable::build(4, "e".into(), Arc::new(gone), &settings, Some(&t3));
        assert!(t4.extra.load().is_empty());
        assert_eq!(
            t3.clients().iter().filter(|c| c.variant.is_some()).count(),
            1
        );
    }

    #[test]
    fn local_addresses() {
        for ip in [
            "127.0.0.1",
            "127.9.9.9",
            "169.254.169.254",
            "0.0.0.0",
            "::1",
            "::",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_local(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "10.0.0.1",
            "172.17.0.1",
            "192.168.1.1",
            "2001:db8::1",
            "fec0::1",
        ] {
            assert!(!is_local(ip.parse().unwrap()), "{ip}");
        }
    }
}
