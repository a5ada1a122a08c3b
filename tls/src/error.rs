//! Errors: loading certificates ([`TlsError`]) and handshakes
//! ([`HandshakeError`]).

use std::path::PathBuf;

use rustls::{AlertDescription, CertificateError};

/// Loading or using certificate files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM {what} in it")]
    NoPem { path: PathBuf, what: &'static str },
    #[error("{path}: malformed PEM: {detail}")]
    BadPem { path: PathBuf, detail: String },
    #[error("{path}: {detail}")]
    BadCertificate { path: PathBuf, detail: String },
    #[error("{path}: the key cannot be used: {detail}")]
    BadKey { path: PathBuf, detail: String },
    #[error("{cert} and {key} do not belong together: {detail}")]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        detail: String,
    },
    /// The certificate is expired or not yet valid: peers would refuse it.
    #[error(
        "{path}: certificate {subject} is not valid now ({now}): valid from {not_before} to {not_after}"
    )]
    NotValidNow {
        path: PathBuf,
        subject: String,
        not_before: String,
        not_after: String,
        now: String,
    },
    /// A file the configuration needs was not given.
    #[error("{0}")]
    Missing(String),
    /// A setting's value is not one of those allowed.
    #[error("{0}")]
    Invalid(String),
    #[error("invalid TLS server name {name:?}: {detail}")]
    ServerName { name: String, detail: String },
    #[error("building the TLS configuration: {0}")]
    Config(String),
}

/// Why a handshake failed, as a metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// The peer did not speak TLS (a plaintext client, say).
    NotTls,
    /// A client certificate was required and none came.
    NoClientCert,
    /// The peer's certificate is not signed by a trusted CA.
    UnknownCa,
    /// The peer's certificate has expired.
    Expired,
    /// The peer's certificate is not valid yet.
    NotYetValid,
    /// The server's certificate does not carry the expected name.
    WrongName,
    /// The peer refused our certificate (it sent an alert).
    RefusedByPeer,
    /// Any other certificate problem.
    BadCertificate,
    /// The handshake did not finish in time.
    Timeout,
    /// The connection failed underneath (reset, closed).
    Io,
    /// Anything else (no common protocol version or cipher suite, …).
    Protocol,
}

impl HandshakeFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotTls => "not_tls",
            Self::NoClientCert => "no_client_cert",
            Self::UnknownCa => "unknown_ca",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongName => "wrong_name",
            Self::RefusedByPeer => "refused_by_peer",
            Self::BadCertificate => "bad_certificate",
            Self::Timeout => "timeout",
            Self::Io => "io",
            Self::Protocol => "protocol",
        }
    }

    /// Certificate problems deserve a warning; the rest (port scans,
    /// resets) are routine.
    pub fn is_certificate_problem(self) -> bool {
        matches!(
            self,
            Self::NoClientCert
                | Self::UnknownCa
                | Self::Expired
                | Self::NotYetValid
                | Self::WrongName
                | Self::RefusedByPeer
                | Self::BadCertificate
        )
    }
}

/// A failed TLS handshake.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake failed ({}): {message}", .failure.as_str())]
pub struct HandshakeError {
    pub failure: HandshakeFailure,
    pub message: String,
}

impl HandshakeError {
    pub(crate) fn timeout() -> Self {
        Self {
            failure: HandshakeFailure::Timeout,
            message: "the handshake did not finish in time".to_owned(),
        }
    }

    /// Classifies what tokio-rustls returned. `peer` names the other side
    /// ("client" or "server") for the message.
    pub(crate) fn classify(error: &std::io::Error, peer: &str) -> Self {
        let Some(tls) = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        else {
            return Self {
                failure: HandshakeFailure::Io,
                message: error.to_string(),
            };
        };
        let (failure, message) = match tls {
            rustls::Error::InvalidCertificate(cert) => classify_certificate(cert, peer),
            rustls::Error::NoCertificatesPresented => (
                HandshakeFailure::NoClientCert,
                format!(
                    "the {peer} presented no certificate, and one from the mesh CA is required"
                ),
            ),
            rustls::Error::AlertReceived(alert) => classify_alert(*alert, peer),
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => (
                HandshakeFailure::NotTls,
                format!("the {peer} does not speak TLS ({tls})"),
            ),
            other => (HandshakeFailure::Protocol, other.to_string()),
        };
        Self { failure, message }
    }
}

fn classify_certificate(cert: &CertificateError, peer: &str) -> (HandshakeFailure, String) {
    let failure = match cert {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            HandshakeFailure::Expired
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            HandshakeFailure::NotYetValid
        }
        // A CA of the same name that did not sign it (another `certs init`).
        CertificateError::UnknownIssuer | CertificateError::BadSignature => {
            HandshakeFailure::UnknownCa
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            HandshakeFailure::WrongName
        }
        _ => HandshakeFailure::BadCertificate,
    };
    let what = match failure {
        HandshakeFailure::Expired => "has expired",
        HandshakeFailure::NotYetValid => "is not valid yet",
        HandshakeFailure::UnknownCa => "is not signed by the mesh CA",
        HandshakeFailure::WrongName => "does not carry the expected name",
        _ => "was refused",
    };
    (failure, format!("the {peer}'s certificate {what}: {cert}"))
}

fn classify_alert(alert: AlertDescription, peer: &str) -> (HandshakeFailure, String) {
    let failure = match alert {
        AlertDescription::CertificateExpired => HandshakeFailure::Expired,
        AlertDescription::UnknownCA => HandshakeFailure::UnknownCa,
        AlertDescription::CertificateRequired => HandshakeFailure::NoClientCert,
        AlertDescription::BadCertificate
        | AlertDescription::CertificateUnknown
        | AlertDescription::UnsupportedCertificate
        | AlertDescription::CertificateRevoked
        | AlertDescription::AccessDenied => HandshakeFailure::RefusedByPeer,
        _ => HandshakeFailure::Protocol,
    };
    (
        failure,
        format!(
            "the {peer} refused the handshake (alert: {alert:?}): check this side's certificate against the {peer}'s CA bundle"
        ),
    )
}
