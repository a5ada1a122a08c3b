//! ECS task metadata endpoint v4: `GET ${ECS_CONTAINER_METADATA_URI_V4}/task`.
//!
//! It gives the task's availability zone. It gives the host IP only in some
//! network modes:
//! - `awsvpc`: `Networks[].IPv4Addresses[0]` is the task's ENI address. For an
//!   agent running as an awsvpc task that is where its listeners are reachable,
//!   but it is *not* the instance's primary private IP.
//! - `host`: the task shares the instance's network namespace; an address
//!   reported there is the instance's. (Whether the ECS agent fills
//!   `IPv4Addresses` in host mode is not documented; an empty or missing list
//!   is treated as "no answer".)
//! - `bridge` (and `none`, `container:…`): the address is the container's own
//!   Docker-bridge address (e.g. 172.17.0.x), never the host's, so it is
//!   ignored and discovery goes on to the next source.
//!
//! v4 has no instance id (nor container-instance ARN).

use std::net::{IpAddr, Ipv4Addr};

use hyper::Method;
use serde::Deserialize;

use crate::error::{FetchError, SourceError};
use crate::http::{self, Http};

/// A task with many containers stays far below this.
const BODY_LIMIT: usize = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Task {
    availability_zone: Option<String>,
    containers: Option<Vec<Container>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Container {
    networks: Option<Vec<Network>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Network {
    network_mode: Option<String>,
    #[serde(rename = "IPv4Addresses")]
    ipv4_addresses: Option<Vec<String>>,
}

/// What the task metadata said.
#[derive(Debug)]
pub(crate) struct Answer {
    pub availability_zone: Option<String>,
    /// The host IP, or why this network mode does not give it.
    pub host_ip: Result<IpAddr, SourceError>,
}

pub(crate) async fn fetch(http: &Http, base_uri: &str) -> Result<Answer, SourceError> {
    let url = http::join(base_uri, "task");
    let fail = |kind| SourceError::EcsMetadata {
        url: url.clone(),
        kind,
    };
    let response = http
        .send(&Method::GET, &url, &[], BODY_LIMIT)
        .await
        .map_err(fail)?;
    let (availability_zone, host_ip) = parse(&response.body).map_err(fail)?;
    Ok(Answer {
        availability_zone,
        host_ip: host_ip.map_err(fail),
    })
}

type Parsed = (Option<String>, Result<IpAddr, FetchError>);

/// The AZ, and the host IP if the network mode gives it.
fn parse(body: &[u8]) -> Result<Parsed, FetchError> {
    let task: Task = serde_json::from_slice(body).map_err(FetchError::Json)?;
    let zone = task
        .availability_zone
        .map(|zone| zone.trim().to_owned())
        .filter(|zone| !zone.is_empty());
    let networks = task
        .containers
        .iter()
        .flatten()
        .flat_map(|container| container.networks.iter().flatten());
    let mut first_mode = None;
    for network in networks {
        let mode = network.network_mode.as_deref().unwrap_or("").trim();
        first_mode.get_or_insert_with(|| mode.to_owned());
        if !(mode.eq_ignore_ascii_case("awsvpc") || mode.eq_ignore_ascii_case("host")) {
            continue;
        }
        let address = network
            .ipv4_addresses
            .as_ref()
            .and_then(|addresses| addresses.first())
            .and_then(|address| address.trim().parse::<Ipv4Addr>().ok())
            .filter(|ip| !ip.is_unspecified());
        if let Some(ip) = address {
            return Ok((zone, Ok(IpAddr::V4(ip))));
        }
    }
    let mode = match first_mode {
        None => "(none reported)".to_owned(),
        Some(mode) if mode.eq_ignore_ascii_case("awsvpc") || mode.eq_ignore_ascii_case("host") => {
            format!("{mode} without an IPv4 address")
        }
        Some(mode) => mode,
    };
    Ok((zone, Err(FetchError::NoHostIp { mode })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(mode: &str, addresses: &str) -> String {
        format!(
            r#"{{"Cluster":"demo","TaskARN":"arn:aws:ecs:us-west-2:111122223333:task/demo/0123",
                "AvailabilityZone":"us-west-2d","LaunchType":"EC2",
                "Containers":[{{"Name":"agent","Type":"NORMAL",
                  "Networks":[{{"NetworkMode":"{mode}","IPv4Addresses":{addresses}}}]}}]}}"#
        )
    }

    #[test]
    fn awsvpc_gives_the_eni_address() {
        let (zone, ip) = parse(task("awsvpc", r#"["10.0.2.61"]"#).as_bytes()).unwrap();
        assert_eq!(zone.as_deref(), Some("us-west-2d"));
        assert_eq!(ip.unwrap(), "10.0.2.61".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn host_mode_address_is_used_when_reported() {
        let (_, ip) = parse(task("host", r#"["10.0.1.43"]"#).as_bytes()).unwrap();
        assert_eq!(ip.unwrap(), "10.0.1.43".parse::<IpAddr>().unwrap());
        let (_, ip) = parse(task("host", r#"[""]"#).as_bytes()).unwrap();
        assert!(
            matches!(ip, Err(FetchError::NoHostIp { ref mode }) if mode == "host without an IPv4 address"),
            "{ip:?}"
        );
    }

    #[test]
    fn bridge_mode_never_gives_the_host_ip() {
        let (zone, ip) = parse(task("bridge", r#"["172.17.0.2"]"#).as_bytes()).unwrap();
        assert_eq!(zone.as_deref(), Some("us-west-2d"));
        assert!(
            matches!(ip, Err(FetchError::NoHostIp { ref mode }) if mode == "bridge"),
            "{ip:?}"
        );
    }

    #[test]
    fn sparse_and_bad_json() {
        let (zone, ip) = parse(br#"{"Cluster":"demo"}"#).unwrap();
        assert_eq!(zone, None);
        assert!(
            matches!(ip, Err(FetchError::NoHostIp { ref mode }) if mode == "(none reported)"),
            "{ip:?}"
        );
        let (_, ip) = parse(br#"{"Containers":null,"AvailabilityZone":" "}"#).unwrap();
        assert!(ip.is_err());
        assert!(matches!(parse(b"not json"), Err(FetchError::Json(_))));
        assert!(matches!(parse(b"[]"), Err(FetchError::Json(_))));
    }
}
