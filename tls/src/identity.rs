//! What a certificate says: its names (the identities authorization is
//! decided on) and its validity period.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
use x509_parser::time::ASN1Time;

/// The parts of a certificate ecsmesh looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject, as text (`CN=ecsmesh-agent`).
    pub subject: String,
    /// DNS and URI subject alternative names, then the common name: the
    /// names authorization matches against.
    pub identities: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
    pub not_before_text: String,
    pub not_after_text: String,
}

impl CertInfo {
    /// Parses a DER certificate; `None` if it is not one.
    pub fn parse(der: &CertificateDer<'_>) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
        let mut identities = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(n) | GeneralName::URI(n) => {
                        identities.push((*n).to_owned());
                    }
                    _ => {}
                }
            }
        }
        for cn in cert.subject().iter_common_name() {
            if let Ok(cn) = cn.as_str()
                && !identities.iter().any(|i| i == cn)
            {
                identities.push(cn.to_owned());
            }
        }
        let validity = cert.validity();
        Some(Self {
            subject: cert.subject().to_string(),
            identities,
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            not_before_text: validity.not_before.to_string(),
            not_after_text: validity.not_after.to_string(),
        })
    }

    /// Whether the certificate is valid at this moment.
    pub fn valid_now(&self) -> bool {
        let now = ASN1Time::now().timestamp();
        self.not_before <= now && now <= self.not_after
    }

    /// Seconds left before it expires (negative once expired).
    pub fn seconds_left(&self) -> i64 {
        self.not_after - ASN1Time::now().timestamp()
    }
}

/// The current time in a certificate's format (for messages).
pub(crate) fn now_text() -> String {
    ASN1Time::now().to_string()
}

/// Who is on the other side of a connection, as its certificate says.
/// Empty when the peer presented no certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    /// The peer certificate's identities (see [`CertInfo::identities`]).
    pub identities: Arc<[String]>,
}

impl Peer {
    pub(crate) fn from_chain(chain: Option<&[CertificateDer<'static>]>) -> Self {
        let identities = chain
            .and_then(|c| c.first())
            .and_then(CertInfo::parse)
            .map(|info| info.identities)
            .unwrap_or_default();
        Self {
            identities: identities.into(),
        }
    }

    /// Whether a verified certificate was presented.
    pub fn authenticated(&self) -> bool {
        !self.identities.is_empty()
    }

    /// Whether any of the peer's identities is in `allowed`.
    pub fn is_any_of(&self, allowed: &[String]) -> bool {
        self.identities.iter().any(|i| allowed.contains(i))
    }

    /// The first identity, for logs.
    pub fn name(&self) -> &str {
        self.identities.first().map_or("-", String::as_str)
    }
}
