//! The start-up rule for dtab writes (issue #16, "secure by default"):
//! writes are open to anyone when neither a bearer token nor admin client
//! certificate identities are configured (see
//! [`crate::grpc::admin::AdminService`]'s write check). On a loopback
//! address that only exposes them to local processes; on any other address
//! the controller refuses to start unless told so explicitly.

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
