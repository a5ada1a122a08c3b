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

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "{file}: environment variable {var} is not set and has no default (write ${{{var}:-default}})"
    )]
    UnsetVariable { file: String, var: String },
    #[error("{file}: unterminated ${{ at byte {offset}")]
    Unterminated { file: String, offset: usize },
    #[error("{file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {source}")]
    Yaml {
        file: String,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("namespace {namespace}: invalid base dtab: {error}")]
    BaseDtab {
        namespace: String,
        error: ecsmesh_dtab::ParseError,
    },
    #[error("invalid duration {0:?}: use e.g. 500ms, 10s, 2m")]
    Duration(String),
}

/// Replaces `${VAR}` and `${VAR:-default}` using `lookup`.
pub fn substitute(
    file: &str,
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(ConfigError::Unterminated {
                file: file.to_owned(),
                offset: text.len() - rest.len() + start,
            });
        };
        let expr = &after[..end];
        let (var, default) = match expr.split_once(":-") {
            Some((v, d)) => (v, Some(d)),
            None => (expr, None),
        };
        match lookup(var).or_else(|| default.map(str::to_owned)) {
            Some(value) => out.push_str(&value),
            None => {
                return Err(ConfigError::UnsetVariable {
                    file: file.to_owned(),
                    var: var.to_owned(),
                });
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses `500ms`, `10s`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, ConfigError> {
    let bad = || ConfigError::Duration(s.to_owned());
    let s = s.trim();
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = number.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

/// The YAML file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub grpc_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub store_dir: Option<PathBuf>,
    pub admin_token_file: Option<PathBuf>,
    #[serde(default)]
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    pub ecs: Option<EcsFileConfig>,
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
    /// Base dtab of the "default" namespace [default: /svc=>/#/ecs/<cluster> for one cluster].
    #[arg(long, env = "ECSMESH_BASE_DTAB")]
    pub base_dtab: Option<String>,
}

/// ECS settings, resolved.
#[derive(Clone, Debug)]
pub struct EcsSettings {
    pub clusters: Vec<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub resync_interval: Duration,
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
}

impl Config {
    /// Reads the file (if any), substitutes variables, applies flags.
    pub fn load(args: &Args) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    file: name.clone(),
                    source,
                })?;
                let text = substitute(&name, &text, |v| std::env::var(v).ok())?;
                serde_yaml_ng::from_str(&text)
                    .map_err(|source| ConfigError::Yaml { file: name, source })?
            }
            None => FileConfig::default(),
        };
        Ok(Self::resolve(args, file)?)
    }

    /// Flags and environment over the file, then defaults.
    pub fn resolve(args: &Args, file: FileConfig) -> Result<Self, ConfigError> {
        let file_ecs = file.ecs.unwrap_or_default();
        let clusters = if args.clusters.is_empty() {
            file_ecs.clusters
        } else {
            args.clusters.clone()
        };
        let resync_interval = args
            .resync_interval
            .as_deref()
            .or(file_ecs.resync_interval.as_deref())
            .map_or(Ok(Duration::from_secs(10)), parse_duration)?;
        let mut base: BTreeMap<String, String> = file
            .namespaces
            .into_iter()
            .map(|(ns, c)| (ns, c.base_dtab))
            .collect();
        if let Some(d) = &args.base_dtab {
            base.insert("default".to_owned(), d.clone());
        } else if let (false, [cluster]) = (base.contains_key("default"), clusters.as_slice()) {
            base.insert("default".to_owned(), format!("/svc=>/#/ecs/{cluster}"));
        }
        let base_dtabs = base
            .into_iter()
            .map(|(namespace, text)| match Dtab::read(&text) {
                Ok(d) => Ok((namespace, Arc::new(d))),
                Err(error) => Err(ConfigError::BaseDtab { namespace, error }),
            })
            .collect::<Result<_, _>>()?;
        let token_file = args.admin_token_file.clone().or(file.admin_token_file);
        let admin_token = token_file
            .map(|path| {
                std::fs::read_to_string(&path)
                    .map(|t| Arc::<str>::from(t.trim()))
                    .map_err(|source| ConfigError::Read {
                        file: path.display().to_string(),
                        source,
                    })
            })
            .transpose()?;
        let ecs = (!clusters.is_empty()).then(|| EcsSettings {
            clusters,
            region: args.aws_region.clone().or(file_ecs.region),
            endpoint_url: args.aws_endpoint_url.clone().or(file_ecs.endpoint_url),
            resync_interval,
        });
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(var: &str) -> Option<String> {
        (var == "CLUSTER").then(|| "demo".to_owned())
    }

    #[test]
    fn substitution() {
        assert_eq!(
            substitute(
                "f",
                "a: ${CLUSTER}\nb: ${REGION:-us-west-1}\nc: /$/inet/$x",
                env
            )
            .unwrap(),
            "a: demo\nb: us-west-1\nc: /$/inet/$x"
        );
        let err = substitute("f.yaml", "x: ${NOPE}", env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "f.yaml: environment variable NOPE is not set and has no default (write ${NOPE:-default})"
        );
        assert!(matches!(
            substitute("f", "x: ${OPEN", env),
            Err(ConfigError::Unterminated { offset: 3, .. })
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_mins(2));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("1h").is_err());
    }

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
    fn unknown_keys_are_refused() {
        assert!(serde_yaml_ng::from_str::<FileConfig>("grpc_adr: 1").is_err());
    }
}
