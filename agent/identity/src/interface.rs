//! Last resort: an IPv4 address of one of this host's interfaces
//! (`getifaddrs`, through the `if-addrs` crate).

use std::net::{IpAddr, Ipv4Addr};

use crate::error::SourceError;

/// Interfaces that container runtimes and CNI plugins create. Their
/// addresses are private to the host, so a physical-looking interface is
/// preferred when there is one.
const VIRTUAL_PREFIXES: &[&str] = &[
    "docker",
    "br-",
    "veth",
    "ecs-bridge",
    "cni",
    "virbr",
    "flannel",
    "cali",
];

/// One address as the system lists it.
#[derive(Debug, Clone)]
pub(crate) struct Candidate<'a> {
    pub name: &'a str,
    pub ip: IpAddr,
    pub up: bool,
}

/// The chosen interface name and address.
pub(crate) fn host_address() -> Result<(String, Ipv4Addr), SourceError> {
    let interfaces = if_addrs::get_if_addrs().map_err(SourceError::Interfaces)?;
    let candidates = interfaces.iter().map(|interface| Candidate {
        name: &interface.name,
        ip: interface.ip(),
        up: interface.is_oper_up(),
    });
    pick(candidates)
        .map(|(name, ip)| (name.to_owned(), ip))
        .ok_or(SourceError::NoInterfaceAddress)
}

/// The first IPv4 address that is not loopback, link-local (169.254/16,
/// e.g. `ecs-bridge`) or unspecified, preferring interfaces that are not
/// container bridges and that are up; ties keep the system's order.
pub(crate) fn pick<'a>(
    candidates: impl IntoIterator<Item = Candidate<'a>>,
) -> Option<(&'a str, Ipv4Addr)> {
    candidates
        .into_iter()
        .filter_map(|candidate| match candidate.ip {
            IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_link_local() && !ip.is_unspecified() => {
                Some((candidate, ip))
            }
            _ => None,
        })
        .min_by_key(|(candidate, _)| (is_virtual(candidate.name), !candidate.up))
        .map(|(candidate, ip)| (candidate.name, ip))
}

fn is_virtual(name: &str) -> bool {
    VIRTUAL_PREFIXES
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &'static str, ip: &str, up: bool) -> Candidate<'static> {
        Candidate {
            name,
            ip: ip.parse().unwrap(),
            up,
        }
    }

    #[test]
    fn loopback_link_local_and_ipv6_are_skipped() {
        let only = [
            c("lo", "127.0.0.1", true),
            c("ecs-bridge", "169.254.172.1", true),
            c("eth0", "fe80::1", true),
            c("eth0", "2001:db8::5", true),
        ];
        assert_eq!(pick(only.clone()), None);
        let with_eth = only.into_iter().chain([c("eth0", "10.0.1.43", true)]);
        assert_eq!(pick(with_eth), Some(("eth0", Ipv4Addr::new(10, 0, 1, 43))));
    }

    #[test]
    fn physical_and_up_interfaces_win_then_system_order() {
        let list = [
            c("lo", "127.0.0.1", true),
            c("docker0", "172.17.0.1", true),
            c("eth1", "10.0.9.9", false),
            c("eth0", "10.0.1.43", true),
            c("eth2", "10.0.3.3", true),
        ];
        assert_eq!(pick(list), Some(("eth0", Ipv4Addr::new(10, 0, 1, 43))));
        let bridges_only = [
            c("docker0", "172.17.0.1", true),
            c("br-1234", "172.18.0.1", true),
        ];
        assert_eq!(
            pick(bridges_only),
            Some(("docker0", Ipv4Addr::new(172, 17, 0, 1)))
        );
    }
}
