//! The Consul source: per configured datacenter, a blocking watch on
//! `/v1/catalog/services` and, per service, one on
//! `/v1/health/service/<name>`; the routable instances become endpoint
//! sets `/#/consul/<dc>/<service>`, reported as source `consul:<dc>`.
//!
//! - Health: an instance is routed to when all its checks (its node's
//!   included) pass, or, with `include_warning`, when none is critical.
//!   Critical instances never are. An instance without checks passes.
//! - Address: the service's address when set, else its node's (Linkerd's
//!   `preferServiceAddress`). Instances whose address is not an IP, or
//!   whose port is 0, are skipped.
//! - A datacenter is reported first once its catalog and every service in
//!   it have been read, so the first report is whole; after that, every
//!   change is reported. A service that leaves the catalog leaves the view.
//! - Errors never empty a set: the last good view stays, and each watch
//!   retries with backoff (see [`ecsmesh_consul::BlockingWatch`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ecsmesh_consul::{
    BlockingWatch, Client, Config, HealthQuery, HealthStatus, ServiceEntry, WatchConfig,
};
use ecsmesh_state::{Endpoint, EndpointSet, names};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::metrics::Metrics;
use crate::sources::{Observed, SourceSets};

/// Endpoint metadata keys.
pub mod meta {
    pub const NODE: &str = "node";
    pub const SERVICE_ID: &str = "service_id";
    pub const DATACENTER: &str = "dc";
}

/// Consul source settings.
#[derive(Clone, Debug)]
pub struct ConsulSettings {
    /// `http://host:port` of a Consul agent or server.
    pub address: String,
    /// Datacenters to watch, each reported as `consul:<dc>`.
    pub datacenters: Vec<String>,
    /// ACL token (`X-Consul-Token`).
    pub token: Option<String>,
    /// `?stale` reads: any server answers, even without a leader.
    pub stale: bool,
    /// Route to instances whose worst check is `warning` too.
    pub include_warning: bool,
    /// `?wait=` of each blocking query.
    pub wait: Duration,
    /// The shortest time between two calls of one watch once its burst is
    /// spent (the rate limit of a watch that keeps returning at once).
    pub min_interval: Duration,
    /// The longest backoff after failed calls.
    pub max_backoff: Duration,
}

impl Default for ConsulSettings {
    fn default() -> Self {
        Self {
            address: "http://127.0.0.1:8500".to_owned(),
            datacenters: vec!["dc1".to_owned()],
            token: None,
            stale: false,
            include_warning: false,
            wait: Duration::from_mins(5),
            min_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Source id of a datacenter's view in [`Observed`].
pub fn source_id(datacenter: &str) -> String {
    format!("consul:{datacenter}")
}

/// Watches every configured datacenter until cancelled. Returns only if
/// the settings are invalid (a malformed address).
pub async fn run(
    settings: ConsulSettings,
    observed: Arc<Observed>,
    metrics: Arc<Metrics>,
) -> Result<(), ecsmesh_consul::Error> {
    let client = Client::new(Config {
        address: settings.address.clone(),
        datacenter: None,
        token: settings.token.clone(),
        stale: settings.stale,
        ..Config::default()
    })?;
    let settings = Arc::new(settings);
    let mut datacenters = JoinSet::new();
    for dc in &settings.datacenters {
        datacenters.spawn(run_datacenter(
            client.clone(),
            dc.clone(),
            Arc::clone(&settings),
            Arc::clone(&observed),
            Arc::clone(&metrics),
        ));
    }
    while datacenters.join_next().await.is_some() {}
    Ok(())
}

/// A service watch's news: its name, which watch it came from, its set.
type Update = (String, u64, EndpointSet);

async fn run_datacenter(
    client: Client,
    dc: String,
    settings: Arc<ConsulSettings>,
    observed: Arc<Observed>,
    metrics: Arc<Metrics>,
) {
    let source = source_id(&dc);
    let (catalog_tx, mut catalog_rx) = mpsc::channel::<BTreeSet<String>>(4);
    let (update_tx, mut update_rx) = mpsc::channel::<Update>(64);
    let mut tasks = JoinSet::new();
    tasks.spawn(watch_catalog(
        client.clone(),
        watch_config(&settings, &dc),
        Arc::clone(&metrics),
        catalog_tx,
    ));
    // Per service: the generation of its current watch and its abort handle.
    let mut watches: HashMap<String, (u64, tokio::task::AbortHandle)> = HashMap::new();
    let mut generation = 0;
    let mut sets: BTreeMap<String, Arc<EndpointSet>> = BTreeMap::new();
    // The services the first catalog listed that have not reported yet;
    // `None` until that catalog arrives, empty once the first sync is done.
    let mut pending: Option<BTreeSet<String>> = None;
    loop {
        tokio::select! {
            Some(services) = catalog_rx.recv() => {
                let services: BTreeSet<String> = services
                    .into_iter()
                    .filter(|s| {
                        let ok = names::consul(&dc, s).is_some();
                        if !ok {
                            tracing::warn!(dc, service = s, "service name cannot be a path element; skipped");
                        }
                        ok
                    })
                    .collect();
                watches.retain(|name, (_, handle)| {
                    let keep = services.contains(name);
                    if !keep {
                        handle.abort();
                        sets.remove(name);
                    }
                    keep
                });
                for name in &services {
                    if !watches.contains_key(name) {
                        generation += 1;
                        let handle = tasks.spawn(watch_service(
                            client.clone(),
                            name.clone(),
                            generation,
                            Arc::clone(&settings),
                            watch_config(&settings, &dc),
                            Arc::clone(&metrics),
                            update_tx.clone(),
                        ));
                        watches.insert(name.clone(), (generation, handle));
                    }
                }
                match &mut pending {
                    None => pending = Some(services),
                    Some(p) => p.retain(|s| services.contains(s)),
                }
            }
            Some((name, from, set)) = update_rx.recv() => {
                if watches.get(&name).is_some_and(|(g, _)| *g == from) {
                    sets.insert(name.clone(), Arc::new(set));
                    if let Some(p) = &mut pending {
                        p.remove(&name);
                    }
                }
            }
            Some(_) = tasks.join_next() => {}
            else => return,
        }
        if pending.as_ref().is_some_and(BTreeSet::is_empty) {
            observed.replace(&source, source_sets(&dc, &sets));
        }
    }
}

fn watch_config(settings: &ConsulSettings, dc: &str) -> WatchConfig {
    WatchConfig {
        wait: settings.wait,
        datacenter: Some(dc.to_owned()),
        min_interval: settings.min_interval,
        retry_max: settings.max_backoff,
        ..WatchConfig::default()
    }
}

fn source_sets(dc: &str, sets: &BTreeMap<String, Arc<EndpointSet>>) -> SourceSets {
    sets.iter()
        .filter_map(|(service, set)| Some((names::consul(dc, service)?, Arc::clone(set))))
        .collect()
}

/// Follows the catalog's service names (tag changes are not news).
async fn watch_catalog(
    client: Client,
    config: WatchConfig,
    metrics: Arc<Metrics>,
    tx: mpsc::Sender<BTreeSet<String>>,
) {
    let dc = config.datacenter.clone().unwrap_or_default();
    let mut watch = BlockingWatch::new(config);
    loop {
        let next = watch
            .next(|opts| {
                let (client, metrics) = (&client, &metrics);
                async move {
                    let r = client.catalog_services(&opts).await;
                    metrics.api_call("consul", "catalog_services", r.is_ok());
                    Ok(r?.map(|services| services.into_keys().collect()))
                }
            })
            .await;
        match next {
            Ok(services) => {
                if tx.send(services).await.is_err() {
                    return;
                }
            }
            Err(error) => log_failure(&dc, "catalog", &error),
        }
    }
}

/// Follows one service's routable endpoints.
async fn watch_service(
    client: Client,
    service: String,
    generation: u64,
    settings: Arc<ConsulSettings>,
    config: WatchConfig,
    metrics: Arc<Metrics>,
    tx: mpsc::Sender<Update>,
) {
    let dc = config.datacenter.clone().unwrap_or_default();
    // Without warnings, Consul can filter: only all-passing instances.
    let query = HealthQuery {
        passing: !settings.include_warning,
        ..HealthQuery::default()
    };
    let mut watch = BlockingWatch::new(config);
    loop {
        let next = watch
            .next(|opts| {
                let (client, metrics, query, service, dc, settings) =
                    (&client, &metrics, &query, &service, &dc, &settings);
                async move {
                    let r = client.health_service(service, query, &opts).await;
                    metrics.api_call("consul", "health_service", r.is_ok());
                    Ok(r?.map(|entries| endpoints(dc, &entries, settings.include_warning)))
                }
            })
            .await;
        match next {
            Ok(set) => {
                if tx.send((service.clone(), generation, set)).await.is_err() {
                    return;
                }
            }
            Err(error) => log_failure(&dc, &service, &error),
        }
    }
}

fn log_failure(dc: &str, what: &str, error: &ecsmesh_consul::Error) {
    if error.is_no_path_to_datacenter() {
        tracing::error!(dc, %error, "Consul does not know this datacenter; retrying");
    } else {
        tracing::warn!(dc, watch = what, %error, "Consul unavailable; keeping the last view");
    }
}

/// The routable instances, as endpoints.
pub fn endpoints(dc: &str, entries: &[ServiceEntry], include_warning: bool) -> EndpointSet {
    entries
        .iter()
        .filter(|e| match e.status() {
            HealthStatus::Passing => true,
            HealthStatus::Warning => include_warning,
            HealthStatus::Critical => false,
        })
        .filter_map(|e| {
            let Ok(ip) = e.endpoint_address().parse::<IpAddr>() else {
                tracing::debug!(
                    dc,
                    service_id = e.service_id,
                    address = e.endpoint_address(),
                    "not an IP address; skipped"
                );
                return None;
            };
            (e.port != 0).then(|| {
                Endpoint::new(SocketAddr::new(ip, e.port))
                    .with_meta(meta::NODE, e.node.clone())
                    .with_meta(meta::SERVICE_ID, e.service_id.clone())
                    .with_meta(meta::DATACENTER, dc)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecsmesh_consul::Check;

    fn entry(
        id: &str,
        node_addr: &str,
        service_addr: &str,
        statuses: &[HealthStatus],
    ) -> ServiceEntry {
        ServiceEntry {
            node: format!("node-{id}"),
            address: node_addr.to_owned(),
            datacenter: "dc1".to_owned(),
            service_id: id.to_owned(),
            service_name: "web".to_owned(),
            service_address: service_addr.to_owned(),
            port: 8080,
            tags: Vec::new(),
            checks: statuses
                .iter()
                .map(|&status| Check {
                    check_id: format!("{id}-check"),
                    service_id: id.to_owned(),
                    status,
                })
                .collect(),
        }
    }

    #[test]
    fn health_policy_and_addresses() {
        use HealthStatus::{Critical, Passing, Warning};
        let entries = [
            entry("a", "10.0.0.1", "", &[Passing]),
            entry("b", "10.0.0.2", "172.17.0.2", &[]),
            entry("c", "10.0.0.3", "", &[Passing, Warning]),
            entry("d", "10.0.0.4", "", &[Warning, Critical]),
            entry("e", "consul.internal", "", &[Passing]),
        ];
        let strict = endpoints("dc1", &entries, false);
        let addrs: Vec<String> = strict.iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(addrs, ["10.0.0.1:8080", "172.17.0.2:8080"]);
        let a = strict.get(&"10.0.0.1:8080".parse().unwrap()).unwrap();
        assert_eq!(a.meta["node"], "node-a");
        assert_eq!(a.meta["service_id"], "a");
        assert_eq!(a.meta["dc"], "dc1");
        let lenient = endpoints("dc1", &entries, true);
        assert_eq!(lenient.len(), 3, "warning included, critical never");
    }
}
