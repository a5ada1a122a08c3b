//! Configuration: a YAML file with `${VAR}` / `${VAR:-default}`
//! substitution, every setting also a flag or environment variable (flags
//! and environment win over the file).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ecsmesh_dtab::Dtab;
use serde::Deserialize;

use crate::reconcile::BaseDtabs;

pub use ecsmesh_config::{ConfigError, parse_duration, substitute};

/// A configuration value that is wrong.
#[derive(Debug, thiserror::Error)]
pub enum InvalidConfig {
    #[error(transparent)]
    File(#[from] ConfigError),
    #[error("--namespace-dtab {0:?}: write NAMESPACE=DTAB")]
    NamespaceDtab(String),
    #[error("namespace {namespace}: invalid base dtab: {error}")]
    BaseDtab {
        namespace: String,
        error: ecsmesh_dtab::ParseError,
    },
}

/// The YAML file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub grpc_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub store_dir: Option<PathBuf>,
    pub admin_token_file: Option<PathBuf>,
    /// Start even though dtab writes are unauthenticated on a non-loopback
    /// address (see [`crate::write_guard`]).
    #[serde(default)]
    pub allow_unauthenticated_writes: bool,
    /// The token agents present on the mesh stream (see [`crate::admission`]).
    pub agent_token_file: Option<PathBuf>,
    /// How an agent's `Hello` is checked beyond its credentials.
    pub agent_admission: Option<crate::admission::AgentAdmission>,
    /// Start even though the mesh stream is open to anyone on a
    /// non-loopback address (see [`crate::write_guard`]).
    #[serde(default)]
    pub allow_unauthenticated_agents: bool,
    #[serde(default)]
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    pub ecs: Option<EcsFileConfig>,
    pub consul: Option<ConsulFileConfig>,
    /// `file` (default) or `consul`: where dtab overrides are stored.
    pub store: Option<StoreKind>,
    /// TLS on the gRPC port, and who may subscribe and write.
    pub tls: Option<TlsFileConfig>,
    /// Bounds on what clients send (see [`crate::limits`]).
    pub limits: Option<LimitsFileConfig>,
    /// The DynamoDB dtab store (`store: dynamodb`).
    pub dynamodb: Option<DynamoFileConfig>,
    /// Replicas sharing a store elect a leader ([`crate::leader`]).
    pub replicas: Option<ReplicasFileConfig>,
}

/// The `replicas:` section of the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicasFileConfig {
    pub advertise_address: Option<String>,
    pub lease_ttl: Option<String>,
}

/// The `dynamodb:` section of the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamoFileConfig {
    pub table: Option<String>,
}

/// The `limits:` section of the file (defaults in [`crate::limits`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFileConfig {
    pub max_summary_services: Option<usize>,
    pub max_summary_bytes: Option<usize>,
    pub max_services: Option<usize>,
    pub max_dtab_bytes: Option<usize>,
    pub max_namespaces: Option<usize>,
    pub max_policies: Option<usize>,
}

/// The `tls:` section of the file (see [`Security`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFileConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub client_auth: Option<String>,
    pub reload_interval: Option<String>,
    #[serde(default)]
    pub agent_identities: Vec<String>,
    #[serde(default)]
    pub admin_identities: Vec<String>,
    pub admin_reads: Option<AdminReads>,
}

/// Who may use the dtab API's reads (`ListNamespaces`, `GetDtab`,
/// `WatchDtab`, `Delegate`, `Resolve`) and `MeshStatus`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AdminReads {
    /// Anyone who reaches the port.
    #[default]
    Open,
    /// Callers with the bearer token or a client certificate from the mesh CA.
    Authenticated,
}

/// TLS on the gRPC port and access to what it serves.
#[derive(Clone, Debug, Default)]
pub struct Security {
    /// TLS on the gRPC port (agents' stream, the dtab API); plaintext when unset.
    pub tls: Option<ServerTlsSettings>,
    /// With client certificates on: the identities that may follow the
    /// mesh stream (empty: any certificate from the mesh CA).
    pub agent_identities: Vec<String>,
    /// Client certificate identities that may write dtabs (as the bearer
    /// token may).
    pub admin_identities: Vec<String>,
    pub admin_reads: AdminReads,
    /// Start even when writes are open on a non-loopback address
    /// ([`crate::write_guard`]); logged as a warning at every start.
    pub allow_unauthenticated_writes: bool,
    /// The bearer token the mesh stream needs ([`crate::admission`]).
    pub agent_token: Option<Arc<str>>,
    /// How a `Hello` is checked beyond the credentials [default: ecs when
    /// ECS clusters are watched, else credentials].
    pub agent_admission: Option<crate::admission::AgentAdmission>,
    /// Start even when the mesh stream is open on a non-loopback address
    /// ([`crate::write_guard`]); logged as a warning at every start.
    pub allow_unauthenticated_agents: bool,
    /// Bounds on the agents' traffic summaries (hostile input, as the
    /// rules above are about hostile callers).
    pub traffic_limits: crate::limits::TrafficLimits,
    /// Bounds on stored dtabs.
    pub dtab_limits: crate::limits::DtabLimits,
}

/// The gRPC port's certificate files and client authentication.
#[derive(Clone, Debug)]
pub struct ServerTlsSettings {
    pub files: ecsmesh_tls::TlsFiles,
    pub client_auth: ecsmesh_tls::ClientAuth,
    pub reload_interval: Duration,
}

/// Where dtab overrides live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The embedded file store (one controller).
    #[default]
    File,
    /// Consul KV (several controller replicas share it).
    Consul,
    /// A DynamoDB table (durable across controller moves; replicas share it).
    Dynamodb,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsulFileConfig {
    pub address: Option<String>,
    #[serde(default)]
    pub datacenters: Vec<String>,
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub stale: bool,
    #[serde(default)]
    pub include_warning: bool,
    /// KV prefix of the Consul dtab store.
    pub kv_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    pub base_dtab: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcsFileConfig {
    #[serde(default)]
    pub clusters: Vec<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub resync_interval: Option<String>,
    /// ECS and EC2 calls a second, sustained (see [`crate::sources::budget`]).
    pub api_rate: Option<f64>,
    /// ECS and EC2 calls that may go at once.
    pub api_burst: Option<f64>,
    /// The SQS queue EventBridge delivers ECS events to.
    pub events_queue_url: Option<String>,
    /// The full resync's interval when events are followed.
    pub full_resync_interval: Option<String>,
}

/// Flags (each also an environment variable).
#[derive(Debug, Default, Parser)]
#[command(
    name = "ecsmesh-controller",
    version,
    about = "The ecsmesh control plane"
)]
pub struct Args {
    /// YAML configuration file.
    #[arg(long, env = "ECSMESH_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC listen address (agent stream and dtab admin API) [default: 0.0.0.0:4321].
    #[arg(long, env = "ECSMESH_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// Admin HTTP listen address (/metrics, /ready, /agents) [default: 0.0.0.0:9991].
    #[arg(long, env = "ECSMESH_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,
    /// Directory of the embedded dtab store [default: ./ecsmesh-data].
    #[arg(long, env = "ECSMESH_STORE_DIR")]
    pub store_dir: Option<PathBuf>,
    /// File holding the bearer token dtab writes must present.
    #[arg(long, env = "ECSMESH_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Start even though dtab writes need no credentials (no token file, no
    /// --admin-identity) and the gRPC address is not loopback; without it
    /// the controller refuses to (a warning is logged at every start).
    #[arg(long, env = "ECSMESH_ALLOW_UNAUTHENTICATED_WRITES")]
    pub allow_unauthenticated_writes: bool,
    /// File holding the bearer token agents present on the mesh stream
    /// (the agent's --controller-token-file).
    #[arg(long, env = "ECSMESH_AGENT_TOKEN_FILE")]
    pub agent_token_file: Option<PathBuf>,
    /// How an agent's Hello is checked beyond its credentials: ecs (its
    /// instance is a container instance of a watched cluster, at the IP it
    /// claims) or credentials [default: ecs when clusters are watched].
    #[arg(long, env = "ECSMESH_AGENT_ADMISSION", value_enum)]
    pub agent_admission: Option<crate::admission::AgentAdmission>,
    /// Start even though the mesh stream needs no credentials (no TLS
    /// client certificates, no --agent-token-file) and the gRPC address is
    /// not loopback; without it the controller refuses to.
    #[arg(long, env = "ECSMESH_ALLOW_UNAUTHENTICATED_AGENTS")]
    pub allow_unauthenticated_agents: bool,
    /// ECS cluster to watch (repeat, or comma-separate in the variable).
    #[arg(long = "cluster", env = "ECSMESH_CLUSTERS", value_delimiter = ',')]
    pub clusters: Vec<String>,
    /// AWS region [default: from the standard chain].
    #[arg(long, env = "ECSMESH_AWS_REGION")]
    pub aws_region: Option<String>,
    /// AWS endpoint override, for emulators such as moto.
    #[arg(long, env = "ECSMESH_AWS_ENDPOINT_URL")]
    pub aws_endpoint_url: Option<String>,
    /// How often ECS is re-read [default: 10s].
    #[arg(long, env = "ECSMESH_RESYNC_INTERVAL")]
    pub resync_interval: Option<String>,
    /// ECS and EC2 calls a second, sustained, shared by every cluster;
    /// throttling halves it for a while [default: 10].
    #[arg(long, env = "ECSMESH_ECS_API_RATE")]
    pub ecs_api_rate: Option<f64>,
    /// ECS and EC2 calls that may go at once after a quiet period
    /// [default: the rate].
    #[arg(long, env = "ECSMESH_ECS_API_BURST")]
    pub ecs_api_burst: Option<f64>,
    /// The SQS queue EventBridge delivers "ECS Task State Change" and "ECS
    /// Container Instance State Change" events to: followed as the fast
    /// path, the full resync becomes the backstop.
    #[arg(long, env = "ECSMESH_ECS_EVENTS_QUEUE_URL")]
    pub ecs_events_queue_url: Option<String>,
    /// The full resync's interval when events are followed [default: 5m].
    #[arg(long, env = "ECSMESH_FULL_RESYNC_INTERVAL")]
    pub full_resync_interval: Option<String>,
    /// Base dtab of the "default" namespace [default: /svc=>/#/ecs/<cluster> for one cluster].
    #[arg(long, env = "ECSMESH_BASE_DTAB")]
    pub base_dtab: Option<String>,
    /// Consul agent address, e.g. http://127.0.0.1:8500 (enables the Consul source).
    #[arg(long, env = "ECSMESH_CONSUL_ADDRESS")]
    pub consul_address: Option<String>,
    /// Consul datacenter to watch (repeat, or comma-separate) [default: dc1].
    #[arg(
        long = "consul-datacenter",
        env = "ECSMESH_CONSUL_DATACENTERS",
        value_delimiter = ','
    )]
    pub consul_datacenters: Vec<String>,
    /// File holding the Consul ACL token.
    #[arg(long, env = "ECSMESH_CONSUL_TOKEN_FILE")]
    pub consul_token_file: Option<PathBuf>,
    /// Where dtab overrides are stored: file (default), consul or dynamodb.
    #[arg(long, env = "ECSMESH_STORE", value_enum)]
    pub store: Option<StoreKind>,
    /// Read Consul with ?stale (any server answers) [default: false].
    #[arg(long, env = "ECSMESH_CONSUL_STALE")]
    pub consul_stale: Option<bool>,
    /// Route to Consul instances whose worst check is warning [default: false].
    #[arg(long, env = "ECSMESH_CONSUL_INCLUDE_WARNING")]
    pub consul_include_warning: Option<bool>,
    /// The DynamoDB table of the dtab store (`--store dynamodb`; region and
    /// endpoint as for ECS) [default: ecsmesh].
    #[arg(long, env = "ECSMESH_DYNAMODB_TABLE")]
    pub dynamodb_table: Option<String>,
    /// Where the other replicas reach this one's gRPC port (host:port), kept
    /// in the leader lease [default: the gRPC address when it names an IP,
    /// else this host's IP (IMDSv2, ECS task metadata, an interface) and
    /// the gRPC port].
    #[arg(long, env = "ECSMESH_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<String>,
    /// A leader silent this long is replaced (DynamoDB or Consul store;
    /// Consul's session floor is 10s) [default: 10s].
    #[arg(long, env = "ECSMESH_LEASE_TTL")]
    pub lease_ttl: Option<String>,
    /// KV prefix of the Consul dtab store [default: ecsmesh/dtabs].
    #[arg(long, env = "ECSMESH_CONSUL_KV_PREFIX")]
    pub consul_kv_prefix: Option<String>,
    /// A namespace's base dtab, NAMESPACE=DTAB (repeat; overrides the file).
    #[arg(
        long = "namespace-dtab",
        env = "ECSMESH_NAMESPACE_DTABS",
        value_delimiter = '\n'
    )]
    pub namespace_dtabs: Vec<String>,
    /// The gRPC port's certificate (PEM); with --tls-key, turns TLS on.
    #[arg(long, env = "ECSMESH_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "ECSMESH_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The mesh CA bundle client certificates are verified against.
    #[arg(long, env = "ECSMESH_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificates: none, optional (verified when presented; the
    /// mesh stream needs one) or required (no handshake without one)
    /// [default: optional with --tls-ca, else none].
    #[arg(long, env = "ECSMESH_TLS_CLIENT_AUTH")]
    pub tls_client_auth: Option<String>,
    /// How often the certificate files are checked for changes [default: 5s].
    #[arg(long, env = "ECSMESH_TLS_RELOAD_INTERVAL")]
    pub tls_reload_interval: Option<String>,
    /// An identity (certificate name) allowed to follow the mesh stream
    /// (repeat, or comma-separate) [default: any certificate from the mesh CA].
    #[arg(
        long = "agent-identity",
        env = "ECSMESH_AGENT_IDENTITIES",
        value_delimiter = ','
    )]
    pub agent_identities: Vec<String>,
    /// A client certificate identity allowed to write dtabs (repeat, or
    /// comma-separate), besides the bearer token.
    #[arg(
        long = "admin-identity",
        env = "ECSMESH_ADMIN_IDENTITIES",
        value_delimiter = ','
    )]
    pub admin_identities: Vec<String>,
    /// Reads of the dtab API and status: open, or authenticated (the token
    /// or any mesh client certificate) [default: open].
    #[arg(long, env = "ECSMESH_ADMIN_READS", value_enum)]
    pub admin_reads: Option<AdminReads>,
    /// Services taken from one agent traffic summary; the rest are dropped
    /// [default: 1000].
    #[arg(long, env = "ECSMESH_MAX_SUMMARY_SERVICES")]
    pub max_summary_services: Option<usize>,
    /// The largest agent stream message (a traffic summary), in bytes; a
    /// larger one closes the stream [default: 262144].
    #[arg(long, env = "ECSMESH_MAX_SUMMARY_BYTES")]
    pub max_summary_bytes: Option<usize>,
    /// Distinct service names kept from all agents' summaries; further
    /// ones are dropped [default: 10000].
    #[arg(long, env = "ECSMESH_MAX_SERVICES")]
    pub max_services: Option<usize>,
    /// The largest dtab a namespace may store, in bytes [default: 65536].
    #[arg(long, env = "ECSMESH_MAX_DTAB_BYTES")]
    pub max_dtab_bytes: Option<usize>,
    /// Stored namespaces; creating more is refused [default: 1000].
    #[arg(long, env = "ECSMESH_MAX_NAMESPACES")]
    pub max_namespaces: Option<usize>,
    /// Stored service policies; creating more is refused [default: 1000].
    #[arg(long, env = "ECSMESH_MAX_POLICIES")]
    pub max_policies: Option<usize>,
}

/// ECS settings, resolved.
#[derive(Clone, Debug)]
pub struct EcsSettings {
    pub clusters: Vec<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub resync_interval: Duration,
    pub api_budget: crate::sources::budget::BudgetSettings,
    pub events_queue_url: Option<String>,
    pub full_resync_interval: Duration,
}

/// The resolved configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub store_dir: PathBuf,
    pub admin_token: Option<Arc<str>>,
    pub base_dtabs: BaseDtabs,
    pub ecs: Option<EcsSettings>,
    /// The Consul source, when a Consul address is configured.
    pub consul: Option<crate::sources::consul::ConsulSettings>,
    /// The Consul KV dtab store, when `store: consul`; else the file store.
    pub consul_store: Option<crate::store::consul_kv::ConsulStoreSettings>,
    /// The DynamoDB dtab store, when `store: dynamodb`.
    pub dynamodb_store: Option<crate::store::dynamodb::DynamoStoreSettings>,
    /// TLS on the gRPC port, and who may subscribe, read and write.
    pub security: Security,
    /// The leader election of replicas sharing a store.
    pub replicas: ReplicaSettings,
}

/// The leader election's settings ([`crate::leader`]); it runs when the
/// store is shared (DynamoDB or Consul).
#[derive(Clone, Debug)]
pub struct ReplicaSettings {
    pub advertise_address: Option<String>,
    pub lease_ttl: Duration,
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        Self {
            advertise_address: None,
            lease_ttl: crate::leader::DEFAULT_TTL,
        }
    }
}

/// Flags over the file's `replicas:` section.
fn replica_settings(
    args: &Args,
    file: ReplicasFileConfig,
) -> Result<ReplicaSettings, InvalidConfig> {
    let lease_ttl = match args.lease_ttl.clone().or(file.lease_ttl) {
        Some(text) => {
            let ttl = parse_duration(&text)?;
            if ttl < Duration::from_millis(500) {
                return Err(ConfigError::Invalid(format!(
                    "lease_ttl {text:?} is below 500ms: renewals would not keep up"
                ))
                .into());
            }
            ttl
        }
        None => crate::leader::DEFAULT_TTL,
    };
    let advertise_address = args.advertise_address.clone().or(file.advertise_address);
    if let Some(address) = &advertise_address {
        let ok = address.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            return Err(ConfigError::Invalid(format!(
                "advertise_address {:?}: write host:port",
                crate::limits::echo(address)
            ))
            .into());
        }
    }
    Ok(ReplicaSettings {
        advertise_address,
        lease_ttl,
    })
}

impl Config {
    /// Reads the file (if any), substitutes variables, applies flags.
    pub fn load(args: &Args) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => ecsmesh_config::load_yaml(path)?,
            None => FileConfig::default(),
        };
        Ok(Self::resolve(args, file)?)
    }

    /// Flags and environment over the file, then defaults.
    pub fn resolve(args: &Args, file: FileConfig) -> Result<Self, InvalidConfig> {
        let file_ecs = file.ecs.unwrap_or_default();
        // The DynamoDB store talks to the same AWS region and endpoint.
        let (file_ecs_region, file_ecs_endpoint) =
            (file_ecs.region.clone(), file_ecs.endpoint_url.clone());
        let clusters = if args.clusters.is_empty() {
            file_ecs.clusters.clone()
        } else {
            args.clusters.clone()
        };
        let mut base: BTreeMap<String, String> = file
            .namespaces
            .into_iter()
            .map(|(ns, c)| (ns, c.base_dtab))
            .collect();
        for entry in &args.namespace_dtabs {
            let Some((ns, dtab)) = entry.split_once('=') else {
                return Err(InvalidConfig::NamespaceDtab(entry.clone()));
            };
            base.insert(ns.trim().to_owned(), dtab.to_owned());
        }
        if let Some(d) = &args.base_dtab {
            base.insert("default".to_owned(), d.clone());
        } else if let (false, [cluster]) = (base.contains_key("default"), clusters.as_slice()) {
            base.insert("default".to_owned(), format!("/svc=>/#/ecs/{cluster}"));
        }
        let base_dtabs = base
            .into_iter()
            .map(|(namespace, text)| match Dtab::read(&text) {
                Ok(d) => Ok((namespace, Arc::new(d))),
                Err(error) => Err(InvalidConfig::BaseDtab { namespace, error }),
            })
            .collect::<Result<_, _>>()?;
        let admin_token = args
            .admin_token_file
            .clone()
            .or(file.admin_token_file)
            .map(|path| read_token(&path))
            .transpose()?;
        let mut security = security(args, file.tls.unwrap_or_default())?;
        // Top-level keys in the file (they are not about TLS).
        security.allow_unauthenticated_writes |= file.allow_unauthenticated_writes;
        security.allow_unauthenticated_agents |= file.allow_unauthenticated_agents;
        security.agent_token = args
            .agent_token_file
            .clone()
            .or(file.agent_token_file)
            .map(|path| read_token(&path))
            .transpose()?;
        security.agent_admission = args.agent_admission.or(file.agent_admission);
        (security.traffic_limits, security.dtab_limits) =
            limits(args, &file.limits.unwrap_or_default())?;
        let store_kind = args.store.or(file.store).unwrap_or_default();
        let (consul, consul_store) =
            consul_settings(args, file.consul.unwrap_or_default(), store_kind)?;
        let dynamodb_store = (store_kind == StoreKind::Dynamodb).then(|| {
            crate::store::dynamodb::DynamoStoreSettings {
                table: args
                    .dynamodb_table
                    .clone()
                    .or(file.dynamodb.unwrap_or_default().table)
                    .unwrap_or_else(|| crate::store::dynamodb::DEFAULT_TABLE.to_owned()),
                region: args.aws_region.clone().or(file_ecs_region.clone()),
                endpoint_url: args.aws_endpoint_url.clone().or(file_ecs_endpoint.clone()),
                ..crate::store::dynamodb::DynamoStoreSettings::default()
            }
        });
        let ecs = if clusters.is_empty() {
            None
        } else {
            Some(ecs_settings(args, file_ecs, clusters)?)
        };
        let replicas = replica_settings(args, file.replicas.unwrap_or_default())?;
        Ok(Self {
            grpc_addr: args
                .grpc_addr
                .or(file.grpc_addr)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 4321))),
            admin_addr: args
                .admin_addr
                .or(file.admin_addr)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 9991))),
            store_dir: args
                .store_dir
                .clone()
                .or(file.store_dir)
                .unwrap_or_else(|| PathBuf::from("ecsmesh-data")),
            admin_token,
            base_dtabs: BaseDtabs(base_dtabs),
            ecs,
            consul,
            consul_store,
            dynamodb_store,
            security,
            replicas,
        })
    }
}

/// The bounds on client input: flags over the file's `limits:` section,
/// then the defaults. A zero would refuse everything, so it is an error.
fn limits(
    args: &Args,
    file: &LimitsFileConfig,
) -> Result<(crate::limits::TrafficLimits, crate::limits::DtabLimits), InvalidConfig> {
    let pick = |name: &str, flag: Option<usize>, file: Option<usize>, default: usize| match flag
        .or(file)
        .unwrap_or(default)
    {
        0 => Err(ConfigError::Invalid(format!("{name} must be at least 1"))),
        n => Ok(n),
    };
    let (traffic, dtabs) = (
        crate::limits::TrafficLimits::default(),
        crate::limits::DtabLimits::default(),
    );
    Ok((
        crate::limits::TrafficLimits {
            max_summary_services: pick(
                "max_summary_services",
                args.max_summary_services,
                file.max_summary_services,
                traffic.max_summary_services,
            )?,
            max_summary_bytes: pick(
                "max_summary_bytes",
                args.max_summary_bytes,
                file.max_summary_bytes,
                traffic.max_summary_bytes,
            )?,
            max_services: pick(
                "max_services",
                args.max_services,
                file.max_services,
                traffic.max_services,
            )?,
        },
        crate::limits::DtabLimits {
            max_dtab_bytes: pick(
                "max_dtab_bytes",
                args.max_dtab_bytes,
                file.max_dtab_bytes,
                dtabs.max_dtab_bytes,
            )?,
            max_namespaces: pick(
                "max_namespaces",
                args.max_namespaces,
                file.max_namespaces,
                dtabs.max_namespaces,
            )?,
            max_policies: pick(
                "max_policies",
                args.max_policies,
                file.max_policies,
                dtabs.max_policies,
            )?,
        },
    ))
}

/// The TLS and access settings: flags over the file's `tls:` section.
fn security(args: &Args, file: TlsFileConfig) -> Result<Security, InvalidConfig> {
    let cert = args.tls_cert.clone().or(file.cert);
    let key = args.tls_key.clone().or(file.key);
    let ca = args.tls_ca.clone().or(file.ca);
    let client_auth = match args.tls_client_auth.clone().or(file.client_auth) {
        Some(text) => text
            .parse()
            .map_err(|e: ecsmesh_tls::TlsError| ConfigError::Invalid(e.to_string()))?,
        None if ca.is_some() => ecsmesh_tls::ClientAuth::Optional,
        None => ecsmesh_tls::ClientAuth::None,
    };
    let reload_interval = args
        .tls_reload_interval
        .as_deref()
        .or(file.reload_interval.as_deref())
        .map_or(Ok(ecsmesh_tls::DEFAULT_RELOAD_INTERVAL), parse_duration)?;
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(ServerTlsSettings {
            files: ecsmesh_tls::TlsFiles {
                ca,
                cert: Some(cert),
                key: Some(key),
            },
            client_auth,
            reload_interval,
        }),
        (None, None) if ca.is_none() => None,
        _ => {
            return Err(ConfigError::Invalid(
                "TLS needs both --tls-cert and --tls-key (and --tls-ca for client certificates)"
                    .to_owned(),
            )
            .into());
        }
    };
    let pick = |flag: &[String], file: Vec<String>| {
        if flag.is_empty() { file } else { flag.to_vec() }
    };
    Ok(Security {
        tls,
        agent_identities: pick(&args.agent_identities, file.agent_identities),
        admin_identities: pick(&args.admin_identities, file.admin_identities),
        admin_reads: args.admin_reads.or(file.admin_reads).unwrap_or_default(),
        allow_unauthenticated_writes: args.allow_unauthenticated_writes,
        allow_unauthenticated_agents: args.allow_unauthenticated_agents,
        ..Security::default()
    })
}

/// The ECS source's settings (`clusters` resolved already).
fn ecs_settings(
    args: &Args,
    file_ecs: EcsFileConfig,
    clusters: Vec<String>,
) -> Result<EcsSettings, InvalidConfig> {
    let resync_interval = args
        .resync_interval
        .as_deref()
        .or(file_ecs.resync_interval.as_deref())
        .map_or(Ok(Duration::from_secs(10)), parse_duration)?;
    let rate = args
        .ecs_api_rate
        .or(file_ecs.api_rate)
        .unwrap_or(crate::sources::budget::DEFAULT_RATE);
    let burst = args.ecs_api_burst.or(file_ecs.api_burst).unwrap_or(rate);
    if !(rate.is_finite() && rate > 0.0 && burst.is_finite() && burst >= 1.0) {
        return Err(ConfigError::Invalid(format!(
            "ecs api_rate {rate} and api_burst {burst}: the rate must be above 0 and the burst at least 1"
        ))
        .into());
    }
    let api_budget = crate::sources::budget::BudgetSettings { rate, burst };
    let events_queue_url = args
        .ecs_events_queue_url
        .clone()
        .or(file_ecs.events_queue_url);
    let full_resync_interval = args
        .full_resync_interval
        .as_deref()
        .or(file_ecs.full_resync_interval.as_deref())
        .map_or(Ok(Duration::from_mins(5)), parse_duration)?;
    Ok(EcsSettings {
        clusters,
        region: args.aws_region.clone().or(file_ecs.region),
        endpoint_url: args.aws_endpoint_url.clone().or(file_ecs.endpoint_url),
        resync_interval,
        api_budget,
        events_queue_url,
        full_resync_interval,
    })
}

/// A bearer token from its file ([`ecsmesh_config::read_token`]).
fn read_token(path: &std::path::Path) -> Result<Arc<str>, ConfigError> {
    ecsmesh_config::read_token(path).map(Arc::from)
}

/// The Consul source (when an address is configured) and the Consul KV
/// store (when `store: consul`).
type ConsulParts = (
    Option<crate::sources::consul::ConsulSettings>,
    Option<crate::store::consul_kv::ConsulStoreSettings>,
);

fn consul_settings(
    args: &Args,
    file_consul: ConsulFileConfig,
    store_kind: StoreKind,
) -> Result<ConsulParts, InvalidConfig> {
    let consul_address = args.consul_address.clone().or(file_consul.address);
    let consul_token = args
        .consul_token_file
        .clone()
        .or(file_consul.token_file)
        .map(|path| {
            std::fs::read_to_string(&path)
                .map(|t| t.trim().to_owned())
                .map_err(|source| ConfigError::Read {
                    file: path.display().to_string(),
                    source,
                })
        })
        .transpose()?;
    let datacenters = if args.consul_datacenters.is_empty() {
        file_consul.datacenters
    } else {
        args.consul_datacenters.clone()
    };
    let consul = consul_address.as_ref().map(|address| {
        let defaults = crate::sources::consul::ConsulSettings::default();
        crate::sources::consul::ConsulSettings {
            address: address.clone(),
            datacenters: if datacenters.is_empty() {
                defaults.datacenters.clone()
            } else {
                datacenters.clone()
            },
            token: consul_token.clone(),
            stale: args.consul_stale.unwrap_or(file_consul.stale),
            include_warning: args
                .consul_include_warning
                .unwrap_or(file_consul.include_warning),
            ..defaults
        }
    });
    let consul_store = match store_kind {
        StoreKind::File | StoreKind::Dynamodb => None,
        StoreKind::Consul => {
            let defaults = crate::store::consul_kv::ConsulStoreSettings::default();
            Some(crate::store::consul_kv::ConsulStoreSettings {
                address: consul_address
                    .clone()
                    .unwrap_or_else(|| defaults.address.clone()),
                token: consul_token.clone(),
                prefix: args
                    .consul_kv_prefix
                    .clone()
                    .or(file_consul.kv_prefix)
                    .unwrap_or_else(|| defaults.prefix.clone()),
                ..defaults
            })
        }
    };
    Ok((consul, consul_store))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_defaults_fill_in() {
        let file: FileConfig = serde_yaml_ng::from_str(
            "grpc_addr: 127.0.0.1:5000\necs:\n  clusters: [demo]\n  resync_interval: 2s\n",
        )
        .unwrap();
        let args = Args {
            grpc_addr: Some("127.0.0.1:6000".parse().unwrap()),
            ..Args::default()
        };
        let c = Config::resolve(&args, file).unwrap();
        assert_eq!(c.grpc_addr.to_string(), "127.0.0.1:6000");
        assert_eq!(c.admin_addr.to_string(), "0.0.0.0:9991");
        assert_eq!(c.base_dtabs.0["default"].to_string(), "/svc=>/#/ecs/demo");
        assert_eq!(c.ecs.unwrap().resync_interval, Duration::from_secs(2));
    }

    #[test]
    fn a_bad_base_dtab_names_its_namespace() {
        let file: FileConfig =
            serde_yaml_ng::from_str("namespaces:\n  prod:\n    base_dtab: '/svc=>'\n").unwrap();
        let err = Config::resolve(&Args::default(), file).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("namespace prod: invalid base dtab: error at offset 6"),
            "{err}"
        );
    }

    #[test]
    fn namespace_dtabs_from_flags() {
        let args = Args {
            namespace_dtabs: vec!["prod=/svc=>/#/ecs/prod".into()],
            ..Args::default()
        };
        let c = Config::resolve(&args, FileConfig::default()).unwrap();
        assert_eq!(c.base_dtabs.0["prod"].to_string(), "/svc=>/#/ecs/prod");
        let bad = Args {
            namespace_dtabs: vec!["prod".into()],
            ..Args::default()
        };
        assert!(Config::resolve(&bad, FileConfig::default()).is_err());
    }

    #[test]
    fn tls_from_the_file_and_flags() {
        let file: FileConfig = serde_yaml_ng::from_str(
            "tls:\n  cert: /t/c.pem\n  key: /t/c-key.pem\n  ca: /t/ca.pem\n  admin_identities: [ops]\n  admin_reads: authenticated\n",
        )
        .unwrap();
        let c = Config::resolve(&Args::default(), file).unwrap();
        let tls = c.security.tls.unwrap();
        // A CA bundle means client certificates are verified when presented.
        assert_eq!(tls.client_auth, ecsmesh_tls::ClientAuth::Optional);
        assert_eq!(c.security.admin_identities, ["ops"]);
        assert_eq!(c.security.admin_reads, AdminReads::Authenticated);
        let args = Args {
            tls_cert: Some("/t/c.pem".into()),
            tls_key: Some("/t/c-key.pem".into()),
            tls_client_auth: Some("required".into()),
            ..Args::default()
        };
        let c = Config::resolve(&args, FileConfig::default()).unwrap();
        assert_eq!(
            c.security.tls.unwrap().client_auth,
            ecsmesh_tls::ClientAuth::Required
        );
        assert!(
            Config::resolve(&Args::default(), FileConfig::default())
                .unwrap()
                .security
                .tls
                .is_none()
        );
        let half = Args {
            tls_cert: Some("/t/c.pem".into()),
            ..Args::default()
        };
        assert!(Config::resolve(&half, FileConfig::default()).is_err());
        let bad = Args {
            tls_client_auth: Some("sometimes".into()),
            ..Args::default()
        };
        assert!(Config::resolve(&bad, FileConfig::default()).is_err());
    }

    #[test]
    fn limits_from_the_file_and_flags() {
        let file: FileConfig =
            serde_yaml_ng::from_str("limits:\n  max_services: 50\n  max_dtab_bytes: 100\n")
                .unwrap();
        let args = Args {
            max_dtab_bytes: Some(200),
            ..Args::default()
        };
        let c = Config::resolve(&args, file).unwrap();
        assert_eq!(c.security.traffic_limits.max_services, 50);
        assert_eq!(c.security.dtab_limits.max_dtab_bytes, 200);
        let defaults = Config::resolve(&Args::default(), FileConfig::default()).unwrap();
        assert_eq!(
            defaults.security.traffic_limits,
            crate::limits::TrafficLimits::default()
        );
        assert_eq!(
            defaults.security.dtab_limits,
            crate::limits::DtabLimits::default()
        );
        let zero = Args {
            max_namespaces: Some(0),
            ..Args::default()
        };
        assert!(Config::resolve(&zero, FileConfig::default()).is_err());
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(serde_yaml_ng::from_str::<FileConfig>("grpc_adr: 1").is_err());
    }
}
