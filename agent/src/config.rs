//! The agent's configuration: a YAML file (with `${VAR}` / `${VAR:-default}`
//! substitution done here, so no `envsubst` wrapper is needed), every
//! setting also a flag or environment variable; flags win.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ecsmesh_config::{ConfigError, parse_duration};
use serde::Deserialize;

/// How the outgoing router reaches an endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Outgoing → the remote host's agent (incoming port) → the endpoint:
    /// Linkerd's linker-to-linker pattern.
    #[default]
    LinkerToLinker,
    /// Outgoing → the endpoint.
    Direct,
}

/// How a request is turned into a logical name.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Identifier {
    /// `/svc/<Host>` (Linkerd's `io.l5d.header.token`, the default).
    HeaderToken {
        #[serde(default = "host_header")]
        header: String,
    },
    /// `/svc/<first N path segments>` (`io.l5d.path`).
    Path {
        #[serde(default = "one")]
        segments: usize,
        #[serde(default)]
        consume: bool,
    },
    /// `/svc` followed by the header's value read as a path (`io.l5d.header`).
    Header {
        #[serde(default = "l5d_name")]
        header: String,
    },
}

fn host_header() -> String {
    "host".to_owned()
}
fn one() -> usize {
    1
}
fn l5d_name() -> String {
    "l5d-name".to_owned()
}

impl Default for Identifier {
    fn default() -> Self {
        Self::HeaderToken {
            header: host_header(),
        }
    }
}

/// The YAML file's shape. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub controller: Option<String>,
    pub controller_token_file: Option<PathBuf>,
    pub namespace: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub mode: Option<Mode>,
    pub host_ip: Option<IpAddr>,
    pub instance_id: Option<String>,
    pub availability_zone: Option<String>,
    pub cluster: Option<String>,
    pub outgoing_port: Option<u16>,
    pub incoming_port: Option<u16>,
    pub admin_port: Option<u16>,
    pub identifier: Option<Identifier>,
    pub allow_inet_override: Option<bool>,
    pub allow_local_inet_override: Option<bool>,
    pub zone_aware_balancing: Option<bool>,
    pub http1_fast_path: Option<bool>,
    pub max_dtab_header_bytes: Option<usize>,
    pub decision_cache_bytes: Option<usize>,
    pub worker_threads: Option<usize>,
    pub clear_context: Option<bool>,
    pub max_call_depth: Option<usize>,
    pub request_timeout: Option<String>,
    pub attempt_timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub max_retries: Option<u32>,
    pub max_in_flight: Option<usize>,
    pub imds_endpoint: Option<String>,
    pub summary_interval: Option<String>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_reload_interval: Option<String>,
    pub l2l_tls: Option<bool>,
    pub l2l_server_name: Option<String>,
    pub l2l_client_auth: Option<String>,
    pub controller_server_name: Option<String>,
    pub max_connections: Option<usize>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub h2_max_concurrent_streams: Option<u32>,
    pub max_request_headers: Option<usize>,
    pub max_request_head_bytes: Option<usize>,
}

#[derive(Debug, Default, Parser)]
#[command(
    name = "ecsmesh-agent",
    version,
    about = "The ecsmesh per-instance proxy"
)]
pub struct Args {
    /// YAML configuration file.
    #[arg(long, env = "ECSMESH_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// The controller's gRPC address [default: http://127.0.0.1:4321].
    #[arg(long, env = "ECSMESH_CONTROLLER")]
    pub controller: Option<String>,
    /// File holding the token the controller's mesh stream needs (its
    /// --agent-token-file); re-read at every reconnect, so it can rotate.
    #[arg(long, env = "ECSMESH_CONTROLLER_TOKEN_FILE")]
    pub controller_token_file: Option<PathBuf>,
    /// The namespace whose dtab to route with [default: default].
    #[arg(long, env = "ECSMESH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Where the last applied snapshot is kept [default: ./ecsmesh-agent-state].
    #[arg(long, env = "ECSMESH_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// linker-to-linker (default) or direct.
    #[arg(long, env = "ECSMESH_MODE", value_enum)]
    pub mode: Option<Mode>,
    /// The host IP to bind and report [default: discovered].
    #[arg(long, env = "ECSMESH_HOST_IP")]
    pub host_ip: Option<IpAddr>,
    #[arg(long, env = "ECSMESH_INSTANCE_ID")]
    pub instance_id: Option<String>,
    #[arg(long, env = "ECSMESH_AVAILABILITY_ZONE")]
    pub availability_zone: Option<String>,
    /// The ECS cluster, reported to the controller.
    #[arg(long, env = "ECSMESH_CLUSTER")]
    pub cluster: Option<String>,
    /// Outgoing (application-facing) port [default: 4140].
    #[arg(long, env = "ECSMESH_OUTGOING_PORT")]
    pub outgoing_port: Option<u16>,
    /// Incoming (linker-to-linker) port [default: 4141].
    #[arg(long, env = "ECSMESH_INCOMING_PORT")]
    pub incoming_port: Option<u16>,
    /// Admin port [default: 9990].
    #[arg(long, env = "ECSMESH_ADMIN_PORT")]
    pub admin_port: Option<u16>,
    /// Let request dtabs (l5d-dtab, l5d-ctx-dtab) route to fixed addresses
    /// (/$/inet/…), checked after binding [default: false].
    #[arg(long, env = "ECSMESH_ALLOW_INET_OVERRIDE")]
    pub allow_inet_override: Option<bool>,
    /// With --allow-inet-override, also let them reach loopback, link-local
    /// (169.254.0.0/16, fe80::/10: the instance metadata service) and
    /// unspecified addresses [default: false].
    #[arg(long, env = "ECSMESH_ALLOW_LOCAL_INET_OVERRIDE")]
    pub allow_local_inet_override: Option<bool>,
    /// Prefer endpoints in this agent's availability zone, spilling to other
    /// zones to keep uneven zones balanced and when this zone's endpoints
    /// fail or are busy [default: true].
    #[arg(long, env = "ECSMESH_ZONE_AWARE_BALANCING")]
    pub zone_aware_balancing: Option<bool>,
    /// Carry plain HTTP/1.1 requests without a body on the outgoing
    /// listener through the HTTP/1 fast path (the request path's cheap
    /// form; everything else goes through hyper) [default: true].
    #[arg(long, env = "ECSMESH_HTTP1_FAST_PATH")]
    pub http1_fast_path: Option<bool>,
    /// Largest l5d-dtab or l5d-ctx-dtab a request may carry, in bytes (all
    /// values of the header together); larger ones get 431 [default: 16384].
    #[arg(long, env = "ECSMESH_MAX_DTAB_HEADER_BYTES")]
    pub max_dtab_header_bytes: Option<usize>,
    /// The routing-decision cache's bound in bytes [default: 8388608].
    #[arg(long, env = "ECSMESH_DECISION_CACHE_BYTES")]
    pub decision_cache_bytes: Option<usize>,
    /// Threads that serve requests [default: the CPUs this process may use:
    /// its CPU affinity and its cgroup's CPU quota (the task's `cpu` limit
    /// on ECS), not the host's core count].
    #[arg(long, env = "ECSMESH_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Strip every l5d-* header both ways on the outgoing listener (edge mode).
    #[arg(long, env = "ECSMESH_CLEAR_CONTEXT")]
    pub clear_context: Option<bool>,
    /// Total time for a request, retries included [default: 10s].
    #[arg(long, env = "ECSMESH_REQUEST_TIMEOUT")]
    pub request_timeout: Option<String>,
    /// The IMDS endpoint for host discovery [default: the standard one].
    #[arg(long, env = "ECSMESH_IMDS_ENDPOINT")]
    pub imds_endpoint: Option<String>,
    /// How often traffic summaries go to the controller's dashboard; 0 turns
    /// them off [default: 5s].
    #[arg(long, env = "ECSMESH_SUMMARY_INTERVAL")]
    pub summary_interval: Option<String>,
    /// How requests are named: header-token[:HEADER], path[:SEGMENTS[:consume]],
    /// header[:HEADER] [default: header-token:host].
    #[arg(long, env = "ECSMESH_IDENTIFIER")]
    pub identifier: Option<String>,
    /// Via entries before a request is refused as a loop [default: 1000].
    #[arg(long, env = "ECSMESH_MAX_CALL_DEPTH")]
    pub max_call_depth: Option<usize>,
    /// Time per attempt [default: 5s].
    #[arg(long, env = "ECSMESH_ATTEMPT_TIMEOUT")]
    pub attempt_timeout: Option<String>,
    /// Time to connect to an endpoint [default: 1s].
    #[arg(long, env = "ECSMESH_CONNECT_TIMEOUT")]
    pub connect_timeout: Option<String>,
    /// Retries of body-less idempotent requests [default: 3].
    #[arg(long, env = "ECSMESH_MAX_RETRIES")]
    pub max_retries: Option<u32>,
    /// Requests held at once before new ones fail fast [default: 10000].
    #[arg(long, env = "ECSMESH_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
    /// The mesh CA bundle (PEM): what peer agents' and the controller's
    /// certificates are verified against.
    #[arg(long, env = "ECSMESH_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This agent's certificate (PEM), presented on the incoming port and
    /// to the controller and remote agents.
    #[arg(long, env = "ECSMESH_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "ECSMESH_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// How often the certificate files are checked for changes [default: 5s].
    #[arg(long, env = "ECSMESH_TLS_RELOAD_INTERVAL")]
    pub tls_reload_interval: Option<String>,
    /// TLS on the linker-to-linker hop (both ports' sides) [default: true
    /// when --tls-cert is given].
    #[arg(long, env = "ECSMESH_L2L_TLS")]
    pub l2l_tls: Option<bool>,
    /// The name remote agents' certificates must carry: fixed, or a template
    /// with {service} and {cluster} from the destination's concrete name
    /// (/#/<namer>/<cluster>/<service>) [default: ecsmesh-agent].
    #[arg(long, env = "ECSMESH_L2L_SERVER_NAME")]
    pub l2l_server_name: Option<String>,
    /// Client certificates on the incoming port: required (mTLS: a
    /// certificate from the mesh CA), optional or none [default: required].
    #[arg(long, env = "ECSMESH_L2L_CLIENT_AUTH")]
    pub l2l_client_auth: Option<String>,
    /// The name the controller's certificate must carry, for an https://
    /// controller [default: the address's host].
    #[arg(long, env = "ECSMESH_CONTROLLER_SERVER_NAME")]
    pub controller_server_name: Option<String>,
    /// Connections each proxy listener holds at once; past it a new one is
    /// closed at once [default: (open-file limit - 256) / 4, within 16 to
    /// 20000: each proxied connection can need an upstream one, there are
    /// two listeners, and 256 files stay for the admin port, the controller
    /// stream and files; the agent raises its soft open-file limit to the
    /// hard one at start].
    #[arg(long, env = "ECSMESH_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Time a connection has to send a whole request head: from accept, and
    /// on a kept-alive HTTP/1 connection from the head's first byte
    /// [default: 10s].
    #[arg(long, env = "ECSMESH_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: Option<String>,
    /// Time a connection with no request in progress stays open [default: 60s].
    #[arg(long, env = "ECSMESH_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
    /// Requests (streams) at once on one HTTP/2 connection [default: 100].
    #[arg(long, env = "ECSMESH_H2_MAX_CONCURRENT_STREAMS")]
    pub h2_max_concurrent_streams: Option<u32>,
    /// Headers an HTTP/1 request may carry to the application (most servers
    /// take 100). The outgoing listener accepts 8 fewer, room for those the
    /// agents add (l5d-*, Via, Host); the incoming one 1 fewer (its Via).
    /// More get 431 [default: 100].
    #[arg(long, env = "ECSMESH_MAX_REQUEST_HEADERS")]
    pub max_request_headers: Option<usize>,
    /// Bytes of a request head (HTTP/1: request line and headers; HTTP/2:
    /// the header list), at least 8192; larger ones get 431 [default: 65536].
    #[arg(long, env = "ECSMESH_MAX_REQUEST_HEAD_BYTES")]
    pub max_request_head_bytes: Option<usize>,
}

/// Parses `--identifier`.
pub fn parse_identifier(s: &str) -> Result<Identifier, ConfigError> {
    let bad = || {
        ConfigError::Invalid(format!(
            "identifier {s:?}: use header-token[:HEADER], path[:SEGMENTS[:consume]] or header[:HEADER]"
        ))
    };
    let mut parts = s.split(':');
    match parts.next() {
        Some("header-token") => Ok(Identifier::HeaderToken {
            header: parts.next().map_or_else(host_header, str::to_owned),
        }),
        Some("path") => Ok(Identifier::Path {
            segments: parts.next().map_or(Ok(1), str::parse).map_err(|_| bad())?,
            consume: match parts.next() {
                None => false,
                Some("consume") => true,
                Some(_) => return Err(bad()),
            },
        }),
        Some("header") => Ok(Identifier::Header {
            header: parts.next().map_or_else(l5d_name, str::to_owned),
        }),
        _ => Err(bad()),
    }
}

/// The default bound on one request dtab header: room for a few hundred
/// dentries, far below what would let one request cost much memory.
pub const DEFAULT_MAX_DTAB_HEADER_BYTES: usize = 16 << 10;

/// The resolved configuration (before the host identity is discovered).
// Each switch is one flag of its own; enums would only rename them.
#[allow(clippy::struct_excessive_bools)]
#[derive(Clone, Debug)]
pub struct Config {
    pub controller: String,
    pub controller_token_file: Option<PathBuf>,
    pub namespace: String,
    pub state_dir: PathBuf,
    pub mode: Mode,
    pub host_ip: Option<IpAddr>,
    pub instance_id: Option<String>,
    pub availability_zone: Option<String>,
    pub cluster: String,
    pub outgoing_port: u16,
    pub incoming_port: u16,
    pub admin_port: u16,
    pub identifier: Identifier,
    pub allow_inet_override: bool,
    pub allow_local_inet_override: bool,
    pub zone_aware_balancing: bool,
    pub http1_fast_path: bool,
    /// Bytes of one dtab header (all its values together) a request may carry.
    pub max_dtab_header_bytes: usize,
    pub decision_cache_bytes: usize,
    /// Request-serving threads; `None`: [`Config::workers`] decides.
    pub worker_threads: Option<usize>,
    pub clear_context: bool,
    /// `Via` entries a request may carry before it is refused as a loop.
    pub max_call_depth: usize,
    pub request_timeout: Duration,
    pub attempt_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_retries: u32,
    /// Requests the proxy holds at once; past it, new ones fail fast (503).
    pub max_in_flight: usize,
    pub imds_endpoint: Option<String>,
    /// Traffic summaries to the controller this often (zero: never).
    pub summary_interval: Duration,
    pub tls: TlsConfig,
    /// The proxy listeners' connection and request-head limits.
    pub limits: ListenerLimits,
}

/// Certificates and names for TLS: on the linker-to-linker hop, and to the
/// controller when its address is `https://`.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub files: ecsmesh_tls::TlsFiles,
    pub reload_interval: Duration,
    /// TLS between agents (outgoing side to the remote incoming port).
    pub l2l: bool,
    pub l2l_server_name: ecsmesh_tls::ServerNameTemplate,
    pub l2l_client_auth: ecsmesh_tls::ClientAuth,
    pub controller_server_name: Option<String>,
}

impl TlsConfig {
    fn resolve(args: &Args, f: &mut FileConfig) -> Result<Self, ConfigError> {
        let invalid = |e: ecsmesh_tls::TlsError| ConfigError::Invalid(e.to_string());
        let files = ecsmesh_tls::TlsFiles {
            ca: args.tls_ca.clone().or(f.tls_ca.take()),
            cert: args.tls_cert.clone().or(f.tls_cert.take()),
            key: args.tls_key.clone().or(f.tls_key.take()),
        };
        let l2l = args.l2l_tls.or(f.l2l_tls).unwrap_or(files.cert.is_some());
        if l2l && (files.ca.is_none() || files.cert.is_none() || files.key.is_none()) {
            return Err(ConfigError::Invalid(
                "linker-to-linker TLS needs --tls-ca, --tls-cert and --tls-key".to_owned(),
            ));
        }
        Ok(Self {
            reload_interval: args
                .tls_reload_interval
                .clone()
                .or(f.tls_reload_interval.take())
                .map_or(Ok(ecsmesh_tls::DEFAULT_RELOAD_INTERVAL), |s| {
                    parse_duration(&s)
                })?,
            l2l,
            l2l_server_name: args
                .l2l_server_name
                .clone()
                .or(f.l2l_server_name.take())
                .as_deref()
                .unwrap_or("ecsmesh-agent")
                .parse()
                .map_err(invalid)?,
            l2l_client_auth: args
                .l2l_client_auth
                .clone()
                .or(f.l2l_client_auth.take())
                .map_or(Ok(ecsmesh_tls::ClientAuth::Required), |s| s.parse())
                .map_err(invalid)?,
            controller_server_name: args
                .controller_server_name
                .clone()
                .or(f.controller_server_name.take()),
            files,
        })
    }
}

/// The proxy listeners' limits (each listener applies them on its own).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Connections per listener; `None` until [`crate::Agent::start`]
    /// derives it from the open-file limit
    /// ([`crate::proxy::listener::max_connections`]).
    pub max_connections: Option<usize>,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub h2_max_concurrent_streams: u32,
    /// Headers a request may carry to the application; see
    /// [`crate::proxy::listener::OUTGOING_HEADER_RESERVE`].
    pub max_request_headers: usize,
    pub max_request_head_bytes: usize,
}

pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_mins(1);
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// hyper's, and most servers', limit.
pub const DEFAULT_MAX_REQUEST_HEADERS: usize = 100;
pub const DEFAULT_MAX_REQUEST_HEAD_BYTES: usize = 64 << 10;
/// hyper's smallest HTTP/1 read buffer (`max_buf_size` panics below it).
pub const MIN_REQUEST_HEAD_BYTES: usize = 8 << 10;
/// Far past any sane head; keeps the HTTP/2 setting (a u32) in range.
pub const MAX_REQUEST_HEAD_BYTES: usize = 16 << 20;

/// `value`, unless it is zero (where zero would refuse everything).
fn not_zero<T: PartialEq + Default>(
    name: &str,
    value: Option<T>,
) -> Result<Option<T>, ConfigError> {
    if value.as_ref().is_some_and(|v| *v == T::default()) {
        return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
    }
    Ok(value)
}

impl ListenerLimits {
    fn resolve(args: &Args, f: &mut FileConfig) -> Result<Self, ConfigError> {
        let duration = |name: &str, flag: &Option<String>, file: Option<String>, default| {
            let d = flag
                .clone()
                .or(file)
                .map_or(Ok(default), |s| parse_duration(&s))?;
            if d.is_zero() {
                return Err(ConfigError::Invalid(format!("{name} must be more than 0")));
            }
            Ok(d)
        };
        let headers = args.max_request_headers.or(f.max_request_headers);
        let reserve = crate::proxy::listener::OUTGOING_HEADER_RESERVE;
        if headers.is_some_and(|n| n <= reserve) {
            return Err(ConfigError::Invalid(format!(
                "max_request_headers must be more than {reserve} (the outgoing listener keeps {reserve} for the agents' own headers)"
            )));
        }
        let head_bytes = args
            .max_request_head_bytes
            .or(f.max_request_head_bytes)
            .unwrap_or(DEFAULT_MAX_REQUEST_HEAD_BYTES);
        if !(MIN_REQUEST_HEAD_BYTES..=MAX_REQUEST_HEAD_BYTES).contains(&head_bytes) {
            return Err(ConfigError::Invalid(format!(
                "max_request_head_bytes must be between {MIN_REQUEST_HEAD_BYTES} and {MAX_REQUEST_HEAD_BYTES}"
            )));
        }
        Ok(Self {
            max_connections: not_zero(
                "max_connections",
                args.max_connections.or(f.max_connections),
            )?,
            header_read_timeout: duration(
                "header_read_timeout",
                &args.header_read_timeout,
                f.header_read_timeout.take(),
                DEFAULT_HEADER_READ_TIMEOUT,
            )?,
            idle_timeout: duration(
                "idle_timeout",
                &args.idle_timeout,
                f.idle_timeout.take(),
                DEFAULT_IDLE_TIMEOUT,
            )?,
            h2_max_concurrent_streams: not_zero(
                "h2_max_concurrent_streams",
                args.h2_max_concurrent_streams
                    .or(f.h2_max_concurrent_streams),
            )?
            .unwrap_or(DEFAULT_H2_MAX_CONCURRENT_STREAMS),
            max_request_headers: headers.unwrap_or(DEFAULT_MAX_REQUEST_HEADERS),
            max_request_head_bytes: head_bytes,
        })
    }
}

impl Config {
    pub fn load(args: &Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => ecsmesh_config::load_yaml(path)?,
            None => FileConfig::default(),
        };
        Self::resolve(args, file)
    }

    pub fn resolve(args: &Args, mut f: FileConfig) -> Result<Self, ConfigError> {
        let tls = TlsConfig::resolve(args, &mut f)?;
        let limits = ListenerLimits::resolve(args, &mut f)?;
        let duration = |flag: &Option<String>, file: Option<String>, default: Duration| {
            flag.clone()
                .or(file)
                .map_or(Ok(default), |s| parse_duration(&s))
        };
        Ok(Self {
            controller: args
                .controller
                .clone()
                .or(f.controller)
                .unwrap_or_else(|| "http://127.0.0.1:4321".to_owned()),
            controller_token_file: args
                .controller_token_file
                .clone()
                .or(f.controller_token_file),
            namespace: args
                .namespace
                .clone()
                .or(f.namespace)
                .unwrap_or_else(|| "default".to_owned()),
            state_dir: args
                .state_dir
                .clone()
                .or(f.state_dir)
                .unwrap_or_else(|| PathBuf::from("ecsmesh-agent-state")),
            mode: args.mode.or(f.mode).unwrap_or_default(),
            host_ip: args.host_ip.or(f.host_ip),
            instance_id: args.instance_id.clone().or(f.instance_id),
            availability_zone: args.availability_zone.clone().or(f.availability_zone),
            cluster: args.cluster.clone().or(f.cluster).unwrap_or_default(),
            outgoing_port: args.outgoing_port.or(f.outgoing_port).unwrap_or(4140),
            incoming_port: args.incoming_port.or(f.incoming_port).unwrap_or(4141),
            admin_port: args.admin_port.or(f.admin_port).unwrap_or(9990),
            identifier: match &args.identifier {
                Some(s) => parse_identifier(s)?,
                None => f.identifier.unwrap_or_default(),
            },
            allow_inet_override: args
                .allow_inet_override
                .or(f.allow_inet_override)
                .unwrap_or(false),
            allow_local_inet_override: args
                .allow_local_inet_override
                .or(f.allow_local_inet_override)
                .unwrap_or(false),
            zone_aware_balancing: args
                .zone_aware_balancing
                .or(f.zone_aware_balancing)
                .unwrap_or(true),
            http1_fast_path: args.http1_fast_path.or(f.http1_fast_path).unwrap_or(true),
            max_dtab_header_bytes: not_zero(
                "max_dtab_header_bytes",
                args.max_dtab_header_bytes.or(f.max_dtab_header_bytes),
            )?
            .unwrap_or(DEFAULT_MAX_DTAB_HEADER_BYTES),
            worker_threads: not_zero("worker_threads", args.worker_threads.or(f.worker_threads))?,
            decision_cache_bytes: args
                .decision_cache_bytes
                .or(f.decision_cache_bytes)
                .unwrap_or(crate::routes::DEFAULT_DECISION_CACHE_BYTES),
            clear_context: args.clear_context.or(f.clear_context).unwrap_or(false),
            max_call_depth: args.max_call_depth.or(f.max_call_depth).unwrap_or(1000),
            request_timeout: duration(
                &args.request_timeout,
                f.request_timeout,
                Duration::from_secs(10),
            )?,
            attempt_timeout: duration(
                &args.attempt_timeout,
                f.attempt_timeout,
                Duration::from_secs(5),
            )?,
            connect_timeout: duration(
                &args.connect_timeout,
                f.connect_timeout,
                Duration::from_secs(1),
            )?,
            max_retries: args.max_retries.or(f.max_retries).unwrap_or(3),
            max_in_flight: args.max_in_flight.or(f.max_in_flight).unwrap_or(10_000),
            imds_endpoint: args.imds_endpoint.clone().or(f.imds_endpoint),
            summary_interval: duration(
                &args.summary_interval,
                f.summary_interval,
                Duration::from_secs(5),
            )?,
            tls,
            limits,
        })
    }

    /// The request-serving threads to start, and where the number comes
    /// from. By default, the parallelism the process is allowed: std reads
    /// the CPU affinity mask and the cgroup (v1 or v2) CPU quota, which is
    /// what ECS sets for a task's or container's `cpu` limit; a container
    /// with no limit gets the CPUs it may run on.
    pub fn workers(&self) -> (usize, &'static str) {
        match self.worker_threads {
            Some(n) => (n, "configured"),
            None => (
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
                "cpu affinity and cgroup quota",
            ),
        }
    }

    /// The listeners' addresses on `host_ip`.
    pub fn addresses(&self, host_ip: IpAddr) -> (SocketAddr, SocketAddr, SocketAddr) {
        (
            SocketAddr::new(host_ip, self.outgoing_port),
            SocketAddr::new(host_ip, self.incoming_port),
            SocketAddr::new(host_ip, self.admin_port),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let f: FileConfig = serde_yaml_ng::from_str(
            "namespace: prod\nmode: direct\nidentifier: {kind: path, segments: 2}\nrequest_timeout: 2s\n",
        )
        .unwrap();
        let args = Args {
            outgoing_port: Some(5140),
            ..Args::default()
        };
        let c = Config::resolve(&args, f).unwrap();
        assert_eq!(c.namespace, "prod");
        assert_eq!(c.mode, Mode::Direct);
        assert_eq!(c.outgoing_port, 5140);
        assert_eq!(c.incoming_port, 4141);
        assert_eq!(
            c.identifier,
            Identifier::Path {
                segments: 2,
                consume: false
            }
        );
        assert_eq!(c.request_timeout, Duration::from_secs(2));
        assert!(!c.allow_inet_override);
    }

    #[test]
    fn identifiers_from_flags() {
        assert_eq!(
            parse_identifier("path:2:consume").unwrap(),
            Identifier::Path {
                segments: 2,
                consume: true
            }
        );
        assert_eq!(
            parse_identifier("header-token").unwrap(),
            Identifier::HeaderToken {
                header: "host".into()
            }
        );
        assert_eq!(
            parse_identifier("header:x-dst").unwrap(),
            Identifier::Header {
                header: "x-dst".into()
            }
        );
        assert!(parse_identifier("path:x").is_err());
        assert!(parse_identifier("nope").is_err());
    }

    #[test]
    fn tls_settings() {
        // Off without certificates.
        let c = Config::resolve(&Args::default(), FileConfig::default()).unwrap();
        assert!(!c.tls.l2l);
        // A certificate turns the linker-to-linker hop's TLS on, with mTLS.
        let f: FileConfig = serde_yaml_ng::from_str(
            "tls_ca: /t/ca.pem\ntls_cert: /t/a.pem\ntls_key: /t/a-key.pem\nl2l_server_name: '{service}.svc.mesh'\n",
        )
        .unwrap();
        let c = Config::resolve(&Args::default(), f).unwrap();
        assert!(c.tls.l2l);
        assert_eq!(c.tls.l2l_client_auth, ecsmesh_tls::ClientAuth::Required);
        assert_eq!(c.tls.l2l_server_name.to_string(), "{service}.svc.mesh");
        assert_eq!(c.tls.reload_interval, ecsmesh_tls::DEFAULT_RELOAD_INTERVAL);
        // Flags win; a missing piece or a bad value is an error.
        let args = Args {
            l2l_client_auth: Some("optional".into()),
            tls_reload_interval: Some("1s".into()),
            ..Args::default()
        };
        let f: FileConfig =
            serde_yaml_ng::from_str("tls_ca: /t/ca.pem\ntls_cert: /t/a.pem\ntls_key: /t/k.pem\n")
                .unwrap();
        let c = Config::resolve(&args, f).unwrap();
        assert_eq!(c.tls.l2l_client_auth, ecsmesh_tls::ClientAuth::Optional);
        assert_eq!(c.tls.reload_interval, Duration::from_secs(1));
        let missing_key = Args {
            tls_cert: Some("/t/a.pem".into()),
            tls_ca: Some("/t/ca.pem".into()),
            ..Args::default()
        };
        assert!(Config::resolve(&missing_key, FileConfig::default()).is_err());
        let bad = Args {
            l2l_server_name: Some("{nope}.mesh".into()),
            ..Args::default()
        };
        assert!(Config::resolve(&bad, FileConfig::default()).is_err());
    }

    #[test]
    fn listener_limits() {
        let c = Config::resolve(&Args::default(), FileConfig::default()).unwrap();
        assert_eq!(
            c.limits,
            ListenerLimits {
                max_connections: None,
                header_read_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_mins(1),
                h2_max_concurrent_streams: 100,
                max_request_headers: 100,
                max_request_head_bytes: 65536,
            }
        );
        // The file sets some, flags win over it.
        let f: FileConfig = serde_yaml_ng::from_str(
            "max_connections: 50\nheader_read_timeout: 2s\nidle_timeout: 5m\nh2_max_concurrent_streams: 8\nmax_request_headers: 64\nmax_request_head_bytes: 16384\n",
        )
        .unwrap();
        let args = Args {
            max_connections: Some(70),
            idle_timeout: Some("30s".into()),
            ..Args::default()
        };
        let c = Config::resolve(&args, f).unwrap();
        assert_eq!(
            c.limits,
            ListenerLimits {
                max_connections: Some(70),
                header_read_timeout: Duration::from_secs(2),
                idle_timeout: Duration::from_secs(30),
                h2_max_concurrent_streams: 8,
                max_request_headers: 64,
                max_request_head_bytes: 16384,
            }
        );
        // Zero, or too little to be of use, is refused with the reason.
        for bad in [
            "max_connections: 0",
            "header_read_timeout: 0s",
            "idle_timeout: 0ms",
            "h2_max_concurrent_streams: 0",
            "max_request_headers: 8",
            "max_request_head_bytes: 4096",
            "max_request_head_bytes: 1000000000",
        ] {
            let f: FileConfig = serde_yaml_ng::from_str(bad).unwrap();
            let e = Config::resolve(&Args::default(), f).unwrap_err();
            let key = bad.split(':').next().unwrap();
            assert!(e.to_string().contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn worker_threads() {
        let c = Config::resolve(&Args::default(), FileConfig::default()).unwrap();
        assert_eq!(c.worker_threads, None);
        assert!(c.workers().0 >= 1);
        let f: FileConfig = serde_yaml_ng::from_str("worker_threads: 4").unwrap();
        let c = Config::resolve(&Args::default(), f).unwrap();
        assert_eq!(c.workers(), (4, "configured"));
        let f: FileConfig = serde_yaml_ng::from_str("worker_threads: 0").unwrap();
        assert!(Config::resolve(&Args::default(), f).is_err());
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(serde_yaml_ng::from_str::<FileConfig>("outgoing_prot: 1").is_err());
    }
}
