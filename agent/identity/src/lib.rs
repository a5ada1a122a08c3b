//! How an ecsmesh agent learns who it is: the host IP its listeners bind and
//! the controller keys it by, its EC2 instance id and its availability zone.
//!
//! # Sources, in order
//!
//! [`discover`] fills each field from the first source that has it. A field
//! set in the configuration is never overridden, and a later source is asked
//! only for fields still missing:
//!
//! 1. **Configuration** ([`IdentityConfig::host_ip`], `instance_id`,
//!    `availability_zone`). When all three are set no request is made.
//! 2. **EC2 IMDSv2**: `PUT {endpoint}/latest/api/token` with
//!    `X-aws-ec2-metadata-token-ttl-seconds: 21600`, then `GET
//!    {endpoint}/latest/meta-data/{local-ipv4, instance-id,
//!    placement/availability-zone}` with `X-aws-ec2-metadata-token`. Only
//!    IMDSv2 is spoken, so it works with `HttpTokens=required`. Real IMDS
//!    echoes the TTL header on the token answer; this client accepts a token
//!    without the echo (it only needs the token). A 404 for the instance id
//!    or AZ leaves that field `None`; without `local-ipv4` IMDS has not
//!    answered and discovery goes on. Skipped when
//!    [`IdentityConfig::imds_disabled`].
//! 3. **ECS task metadata v4**: `GET {ecs_metadata_uri}/task`. Gives the AZ
//!    (`AvailabilityZone`), and the IP only in `awsvpc` mode (the task's ENI
//!    address, `Containers[].Networks[].IPv4Addresses[0]`) or `host` mode.
//!    **In `bridge` mode it does not give the host IP**: the address it
//!    reports is the container's Docker-bridge address, so it is ignored. It
//!    never gives the instance id.
//! 4. **A network interface**: the first IPv4 address that is not loopback
//!    or link-local, preferring interfaces that are not container bridges.
//!
//! If none of them gives a host IP, [`IdentityError::NoHostIp`] lists why
//! each failed. [`Identity::source`] says where the host IP came from; the
//! chosen source and every field's origin are logged with `tracing`.
//!
//! # Bounded time
//!
//! Each HTTP attempt (connect, request, response, body) is bounded by
//! [`IdentityConfig::timeout`] and retried once after a timeout, a transport
//! error or a 5xx. An IMDS that accepts connections but never answers costs
//! about two timeouts before discovery moves on, since nothing else is asked
//! of IMDS once its token request failed.
//!
//! # The environment
//!
//! [`discover`] reads no environment variable; [`IdentityConfig::from_env`]
//! does, so the usual layering is `from_env()` and then explicit settings on
//! top. An unset [`IdentityConfig::imds_endpoint`] means
//! [`DEFAULT_IMDS_ENDPOINT`].
//!
//! # What this cannot know
//!
//! - From a bridge-mode container the IMDSv2 token answer travels one hop too
//!   many unless the instance's `HttpPutResponseHopLimit` is at least 2; the
//!   PUT then times out and discovery falls through.
//! - In awsvpc mode the IP found (from IMDS of the instance, or from the task
//!   metadata) may differ: IMDS `local-ipv4` is the instance's primary IP,
//!   the task metadata gives the task's ENI IP.

mod ecs_metadata;
mod error;
mod http;
mod imds;
mod interface;

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

pub use error::{FetchError, IdentityError, SourceError};

/// IMDS over IPv4 on every EC2 instance.
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";
/// IMDS over IPv6 (Nitro instances with the IPv6 endpoint enabled).
pub const IMDS_IPV6_ENDPOINT: &str = "http://[fd00:ec2::254]";
/// The default [`IdentityConfig::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// Overrides the IMDS endpoint (the AWS SDKs' variable).
pub const ENV_IMDS_ENDPOINT: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
/// `IPv6` selects [`IMDS_IPV6_ENDPOINT`] when no endpoint is set.
pub const ENV_IMDS_ENDPOINT_MODE: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE";
/// `true` (any case) disables IMDS.
pub const ENV_IMDS_DISABLED: &str = "AWS_EC2_METADATA_DISABLED";
/// Injected by the ECS agent into every container (agent 1.39.0 and later).
pub const ENV_ECS_METADATA_URI_V4: &str = "ECS_CONTAINER_METADATA_URI_V4";

/// What the agent is told, and where it may look for the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    /// Wins over every source.
    pub host_ip: Option<IpAddr>,
    /// Wins over IMDS.
    pub instance_id: Option<String>,
    /// Wins over IMDS and the task metadata.
    pub availability_zone: Option<String>,
    /// The IMDS base URL (`http://` only); `None` means
    /// [`DEFAULT_IMDS_ENDPOINT`]. A path is kept: requests go to
    /// `{endpoint}/latest/...`.
    pub imds_endpoint: Option<String>,
    /// Do not ask IMDS.
    pub imds_disabled: bool,
    /// `ECS_CONTAINER_METADATA_URI_V4`; `None` skips the task metadata.
    pub ecs_metadata_uri: Option<String>,
    /// Bound on connecting and on each whole HTTP attempt.
    pub timeout: Duration,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            host_ip: None,
            instance_id: None,
            availability_zone: None,
            imds_endpoint: None,
            imds_disabled: false,
            ecs_metadata_uri: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl IdentityConfig {
    /// Reads [`ENV_IMDS_ENDPOINT`] (or [`ENV_IMDS_ENDPOINT_MODE`] `IPv6`),
    /// [`ENV_IMDS_DISABLED`] and [`ENV_ECS_METADATA_URI_V4`]; empty values
    /// count as unset. The identity fields stay `None` and the timeout is
    /// [`DEFAULT_TIMEOUT`].
    pub fn from_env() -> Self {
        Self::from_env_with(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) with the variables looked up by `get`.
    pub fn from_env_with(mut get: impl FnMut(&str) -> Option<String>) -> Self {
        let mut var = |name: &str| {
            get(name)
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
        };
        let imds_endpoint = var(ENV_IMDS_ENDPOINT).or_else(|| {
            var(ENV_IMDS_ENDPOINT_MODE)
                .filter(|mode| mode.eq_ignore_ascii_case("ipv6"))
                .map(|_| IMDS_IPV6_ENDPOINT.to_owned())
        });
        let imds_disabled =
            var(ENV_IMDS_DISABLED).is_some_and(|value| value.eq_ignore_ascii_case("true"));
        let ecs_metadata_uri = var(ENV_ECS_METADATA_URI_V4);
        Self {
            imds_endpoint,
            imds_disabled,
            ecs_metadata_uri,
            ..Self::default()
        }
    }

    /// The IMDS base URL discovery uses.
    pub fn effective_imds_endpoint(&self) -> &str {
        self.imds_endpoint
            .as_deref()
            .map(str::trim)
            .filter(|endpoint| !endpoint.is_empty())
            .unwrap_or(DEFAULT_IMDS_ENDPOINT)
    }
}

/// Who the agent is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub host_ip: IpAddr,
    /// `None` when neither the configuration nor IMDS gave it.
    pub instance_id: Option<String>,
    /// `None` when no source gave it.
    pub availability_zone: Option<String>,
    /// Where [`host_ip`](Self::host_ip) came from.
    pub source: Source,
}

/// An identity source, in the order [`discover`] consults them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Config,
    Imds,
    EcsMetadata,
    Interface,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Config => "config",
            Self::Imds => "IMDSv2",
            Self::EcsMetadata => "ECS task metadata v4",
            Self::Interface => "network interface",
        })
    }
}

/// Fields found so far, each with its origin.
#[derive(Debug, Default)]
struct Found {
    host_ip: Option<(IpAddr, Source)>,
    instance_id: Option<(String, Source)>,
    availability_zone: Option<(String, Source)>,
}

impl Found {
    fn from_config(cfg: &IdentityConfig) -> Self {
        let text = |value: &Option<String>| {
            value
                .as_deref()
                .map(str::trim)
                .filter(|value| !value.is_empty())
                .map(|value| (value.to_owned(), Source::Config))
        };
        Self {
            host_ip: cfg.host_ip.map(|ip| (ip, Source::Config)),
            instance_id: text(&cfg.instance_id),
            availability_zone: text(&cfg.availability_zone),
        }
    }

    fn complete(&self) -> bool {
        self.host_ip.is_some() && self.instance_id.is_some() && self.availability_zone.is_some()
    }

    fn fill<T>(slot: &mut Option<(T, Source)>, value: Option<T>, source: Source) {
        if slot.is_none() {
            *slot = value.map(|value| (value, source));
        }
    }
}

/// Finds the agent's host IP, instance id and availability zone; see the
/// [crate documentation](crate) for the order of sources.
pub async fn discover(cfg: &IdentityConfig) -> Result<Identity, IdentityError> {
    let mut found = Found::from_config(cfg);
    let mut failures = Vec::new();
    let http = http::Http::new(cfg.timeout);

    if !found.complete() {
        if cfg.imds_disabled {
            failures.push(SourceError::Skipped {
                which: Source::Imds,
                reason: "disabled",
            });
        } else {
            ask_imds(
                &http,
                cfg.effective_imds_endpoint(),
                &mut found,
                &mut failures,
            )
            .await;
        }
    }

    if found.host_ip.is_none() || found.availability_zone.is_none() {
        match cfg
            .ecs_metadata_uri
            .as_deref()
            .map(str::trim)
            .filter(|uri| !uri.is_empty())
        {
            None => failures.push(SourceError::Skipped {
                which: Source::EcsMetadata,
                reason: "no ECS_CONTAINER_METADATA_URI_V4",
            }),
            Some(uri) => ask_ecs_metadata(&http, uri, &mut found, &mut failures).await,
        }
    }

    if found.host_ip.is_none() {
        match interface::host_address() {
            Ok((name, ip)) => {
                tracing::debug!(interface = name, %ip, "host IP from a network interface");
                found.host_ip = Some((IpAddr::V4(ip), Source::Interface));
            }
            Err(err) => failures.push(err),
        }
    }

    let Some((host_ip, source)) = found.host_ip else {
        let err = IdentityError::NoHostIp { failures };
        tracing::error!(error = %err, "agent identity not found");
        return Err(err);
    };
    let origin = |field: &Option<(String, Source)>| field.as_ref().map(|(_, from)| *from);
    tracing::info!(
        %host_ip,
        %source,
        instance_id = found.instance_id.as_ref().map(|(v, _)| v.as_str()),
        instance_id_source = origin(&found.instance_id).map(tracing::field::display),
        availability_zone = found.availability_zone.as_ref().map(|(v, _)| v.as_str()),
        availability_zone_source = origin(&found.availability_zone).map(tracing::field::display),
        "agent identity discovered",
    );
    Ok(Identity {
        host_ip,
        instance_id: found.instance_id.map(|(value, _)| value),
        availability_zone: found.availability_zone.map(|(value, _)| value),
        source,
    })
}

async fn ask_imds(
    http: &http::Http,
    endpoint: &str,
    found: &mut Found,
    failures: &mut Vec<SourceError>,
) {
    let wanted = imds::Wanted {
        host_ip: found.host_ip.is_none(),
        instance_id: found.instance_id.is_none(),
        availability_zone: found.availability_zone.is_none(),
    };
    let answer = match imds::fetch(http, endpoint, wanted).await {
        Ok(answer) => answer,
        Err(err) => {
            tracing::warn!(error = %err, timeout = ?http.timeout(), "IMDSv2 did not answer");
            failures.push(err);
            return;
        }
    };
    match answer.host_ip {
        Ok(ip) => Found::fill(&mut found.host_ip, ip, Source::Imds),
        Err(err) => {
            tracing::warn!(error = %err, "IMDSv2 gave no host IP");
            failures.push(err);
        }
    }
    let optional = |slot: &mut Option<(String, Source)>, value, field: &str| match value {
        Ok(value) => Found::fill(slot, value, Source::Imds),
        Err(err) => tracing::warn!(error = %err, field, "IMDSv2 value unavailable"),
    };
    optional(&mut found.instance_id, answer.instance_id, "instance id");
    optional(
        &mut found.availability_zone,
        answer.availability_zone,
        "availability zone",
    );
}

async fn ask_ecs_metadata(
    http: &http::Http,
    uri: &str,
    found: &mut Found,
    failures: &mut Vec<SourceError>,
) {
    match ecs_metadata::fetch(http, uri).await {
        Ok(answer) => {
            Found::fill(
                &mut found.availability_zone,
                answer.availability_zone,
                Source::EcsMetadata,
            );
            match answer.host_ip {
                Ok(ip) => Found::fill(&mut found.host_ip, Some(ip), Source::EcsMetadata),
                Err(err) if found.host_ip.is_none() => {
                    tracing::info!(error = %err, "ECS task metadata v4 gave no host IP");
                    failures.push(err);
                }
                Err(_) => {}
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "ECS task metadata v4 did not answer");
            failures.push(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_display() {
        assert_eq!(Source::Config.to_string(), "config");
        assert_eq!(Source::Imds.to_string(), "IMDSv2");
        assert_eq!(Source::EcsMetadata.to_string(), "ECS task metadata v4");
        assert_eq!(Source::Interface.to_string(), "network interface");
    }

    fn env(vars: &[(&str, &str)]) -> IdentityConfig {
        IdentityConfig::from_env_with(|name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        })
    }

    #[test]
    fn from_env_reads_the_named_variables() {
        let cfg = env(&[
            (ENV_IMDS_ENDPOINT, "http://127.0.0.1:5001/imds/i-1"),
            (ENV_IMDS_DISABLED, "TRUE"),
            (ENV_ECS_METADATA_URI_V4, "http://169.254.170.2/v4/abc"),
        ]);
        assert_eq!(
            cfg,
            IdentityConfig {
                imds_endpoint: Some("http://127.0.0.1:5001/imds/i-1".into()),
                imds_disabled: true,
                ecs_metadata_uri: Some("http://169.254.170.2/v4/abc".into()),
                ..IdentityConfig::default()
            }
        );
        assert_eq!(cfg.timeout, DEFAULT_TIMEOUT);
        assert_eq!(cfg.host_ip, None);
    }

    #[test]
    fn from_env_defaults_and_empty_values() {
        let cfg = env(&[
            (ENV_IMDS_ENDPOINT, ""),
            (ENV_IMDS_DISABLED, "false"),
            (ENV_ECS_METADATA_URI_V4, "  "),
        ]);
        assert_eq!(cfg, IdentityConfig::default());
        assert_eq!(cfg.effective_imds_endpoint(), DEFAULT_IMDS_ENDPOINT);
        assert!(!env(&[(ENV_IMDS_DISABLED, "1")]).imds_disabled);
    }

    #[test]
    fn endpoint_mode_ipv6_unless_an_endpoint_is_set() {
        let cfg = env(&[(ENV_IMDS_ENDPOINT_MODE, "IPv6")]);
        assert_eq!(cfg.effective_imds_endpoint(), IMDS_IPV6_ENDPOINT);
        let cfg = env(&[
            (ENV_IMDS_ENDPOINT_MODE, "IPv6"),
            (ENV_IMDS_ENDPOINT, "http://127.0.0.1:1"),
        ]);
        assert_eq!(cfg.effective_imds_endpoint(), "http://127.0.0.1:1");
        let cfg = env(&[(ENV_IMDS_ENDPOINT_MODE, "IPv4")]);
        assert_eq!(cfg.effective_imds_endpoint(), DEFAULT_IMDS_ENDPOINT);
    }

    #[tokio::test]
    async fn full_config_makes_no_request() {
        let cfg = IdentityConfig {
            host_ip: Some("10.0.1.43".parse().unwrap()),
            instance_id: Some("i-0123".into()),
            availability_zone: Some("us-west-2d".into()),
            // Never reach for the real IMDS from a test; the integration
            // tests count the requests an IMDS double receives.
            imds_disabled: true,
            ..IdentityConfig::default()
        };
        let id = discover(&cfg).await.unwrap();
        assert_eq!(id.source, Source::Config);
        assert_eq!(id.host_ip, cfg.host_ip.unwrap());
        assert_eq!(id.instance_id.as_deref(), Some("i-0123"));
        assert_eq!(id.availability_zone.as_deref(), Some("us-west-2d"));
    }
}
