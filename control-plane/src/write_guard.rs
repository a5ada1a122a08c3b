//! The start-up rules for dtab writes and the mesh stream (issue #16,
//! "secure by default"). Writes are open to anyone when neither a bearer
//! token nor admin client certificate identities are configured (see
//! [`crate::grpc::admin::AdminService`]'s write check); the mesh stream,
//! which hands out every endpoint and dtab, is open when neither TLS client
//! certificates nor an agent token are (see [`crate::admission`]). On a
//! loopback address that only exposes them to local processes; on any
//! other address the controller refuses to start unless told so explicitly,
//! one flag for each.

use std::net::{IpAddr, SocketAddr};

use crate::config::Security;

/// How dtab writes are protected, when the controller may start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteAccess {
    /// A token or admin identities are configured.
    Authenticated,
    /// Open, but the gRPC port is on loopback: local processes only.
    OpenOnLoopback,
    /// Open on a reachable address, because `--allow-unauthenticated-writes`
    /// says so.
    OpenAllowed,
}

/// The controller would serve the mesh stream to anyone on the network.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "refusing to start: the mesh stream (every endpoint and dtab) would be open to anyone who \
     reaches {grpc_addr}, which is not a loopback address. Give agents credentials \
     (--agent-token-file FILE, or TLS client certificates with --tls-ca), listen on loopback \
     (--grpc-addr 127.0.0.1:4321), or accept an open stream explicitly with \
     --allow-unauthenticated-agents"
)]
pub struct UnauthenticatedAgents {
    pub grpc_addr: SocketAddr,
}

/// Decides whether the mesh stream may be served with these settings.
///
/// # Errors
/// The stream would be open on a non-loopback address without the explicit
/// opt-in.
pub fn check_agents(
    grpc_addr: SocketAddr,
    security: &Security,
) -> Result<WriteAccess, UnauthenticatedAgents> {
    let certificates = security
        .tls
        .as_ref()
        .is_some_and(|t| t.client_auth != ecsmesh_tls::ClientAuth::None);
    if certificates || security.agent_token.is_some() {
        Ok(WriteAccess::Authenticated)
    } else if is_loopback(grpc_addr.ip()) {
        Ok(WriteAccess::OpenOnLoopback)
    } else if security.allow_unauthenticated_agents {
        Ok(WriteAccess::OpenAllowed)
    } else {
        Err(UnauthenticatedAgents { grpc_addr })
    }
}

/// The controller would take unauthenticated dtab writes from the network.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "refusing to start: dtab writes would be unauthenticated on {grpc_addr}, which is not a \
     loopback address. Give writers credentials (--admin-token-file FILE, or --admin-identity \
     NAME with TLS client certificates), listen on loopback (--grpc-addr 127.0.0.1:4321), or \
     accept open writes explicitly with --allow-unauthenticated-writes"
)]
pub struct UnauthenticatedWrites {
    pub grpc_addr: SocketAddr,
}

/// Decides whether the controller may start with these settings.
///
/// # Errors
/// Writes would be open on a non-loopback address without the explicit
/// opt-in.
pub fn check(
    grpc_addr: SocketAddr,
    has_token: bool,
    security: &Security,
) -> Result<WriteAccess, UnauthenticatedWrites> {
    if has_token || !security.admin_identities.is_empty() {
        Ok(WriteAccess::Authenticated)
    } else if is_loopback(grpc_addr.ip()) {
        Ok(WriteAccess::OpenOnLoopback)
    } else if security.allow_unauthenticated_writes {
        Ok(WriteAccess::OpenAllowed)
    } else {
        Err(UnauthenticatedWrites { grpc_addr })
    }
}

/// 127.0.0.0/8 and ::1, also written as an IPv4-mapped IPv6 address.
fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Logs the outcome: a warning at every start when writes are open to the
/// network, so that the choice stays visible.
pub fn log(access: WriteAccess, grpc_addr: SocketAddr) {
    match access {
        WriteAccess::Authenticated => {}
        WriteAccess::OpenOnLoopback => tracing::info!(
            %grpc_addr,
            "dtab writes are unauthenticated: open to every local process \
             (set --admin-token-file to require a token)"
        ),
        WriteAccess::OpenAllowed => tracing::warn!(
            %grpc_addr,
            "dtab writes are unauthenticated and open to anyone who reaches this address \
             (--allow-unauthenticated-writes); set --admin-token-file or --admin-identity"
        ),
    }
}

/// As [`log`], for the mesh stream.
pub fn log_agents(access: WriteAccess, grpc_addr: SocketAddr) {
    match access {
        WriteAccess::Authenticated => {}
        WriteAccess::OpenOnLoopback => tracing::info!(
            %grpc_addr,
            "the mesh stream is unauthenticated: open to every local process \
             (set --agent-token-file or TLS client certificates)"
        ),
        WriteAccess::OpenAllowed => tracing::warn!(
            %grpc_addr,
            "the mesh stream is unauthenticated and open to anyone who reaches this address \
             (--allow-unauthenticated-agents); set --agent-token-file or TLS client certificates"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn open(allow: bool) -> Security {
        Security {
            allow_unauthenticated_writes: allow,
            ..Security::default()
        }
    }

    #[test]
    fn loopback_addresses_start_open() {
        for a in [
            "127.0.0.1:4321",
            "127.1.2.3:0",
            "[::1]:4321",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert_eq!(
                check(addr(a), false, &open(false)),
                Ok(WriteAccess::OpenOnLoopback),
                "{a}"
            );
        }
    }

    #[test]
    fn reachable_addresses_refuse_open_writes() {
        for a in [
            "0.0.0.0:4321",
            "[::]:4321",
            "10.0.0.5:4321",
            "[::ffff:10.0.0.5]:1",
        ] {
            let err = check(addr(a), false, &open(false)).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(a), "{text}");
            // Both ways out are named.
            assert!(text.contains("--admin-token-file"), "{text}");
            assert!(text.contains("--allow-unauthenticated-writes"), "{text}");
        }
    }

    #[test]
    fn the_explicit_flag_allows_open_writes() {
        assert_eq!(
            check(addr("0.0.0.0:4321"), false, &open(true)),
            Ok(WriteAccess::OpenAllowed)
        );
    }

    #[test]
    fn the_mesh_stream_needs_credentials_off_loopback() {
        let err = check_agents(addr("0.0.0.0:4321"), &Security::default()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("--agent-token-file"), "{text}");
        assert!(text.contains("--allow-unauthenticated-agents"), "{text}");
        assert_eq!(
            check_agents(addr("127.0.0.1:4321"), &Security::default()),
            Ok(WriteAccess::OpenOnLoopback)
        );
        let token = Security {
            agent_token: Some("t".into()),
            ..Security::default()
        };
        assert_eq!(
            check_agents(addr("0.0.0.0:4321"), &token),
            Ok(WriteAccess::Authenticated)
        );
        let allowed = Security {
            allow_unauthenticated_agents: true,
            ..Security::default()
        };
        assert_eq!(
            check_agents(addr("[::]:1"), &allowed),
            Ok(WriteAccess::OpenAllowed)
        );
        // Opening writes does not open the stream, nor the other way round.
        assert!(check_agents(addr("0.0.0.0:1"), &open(true)).is_err());
        assert!(check(addr("0.0.0.0:1"), false, &allowed).is_err());
    }

    #[test]
    fn a_token_or_admin_identities_authenticate_writes() {
        assert_eq!(
            check(addr("0.0.0.0:4321"), true, &open(false)),
            Ok(WriteAccess::Authenticated)
        );
        let identities = Security {
            admin_identities: vec!["ecsmesh-admin".into()],
            ..Security::default()
        };
        assert_eq!(
            check(addr("[::]:4321"), false, &identities),
            Ok(WriteAccess::Authenticated)
        );
        // The flag changes nothing when writes are authenticated anyway.
        assert_eq!(
            check(addr("127.0.0.1:1"), true, &open(true)),
            Ok(WriteAccess::Authenticated)
        );
    }
}
