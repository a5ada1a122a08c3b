//! Reading the PEM files: a CA bundle, a certificate chain and its key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::TlsError;
use crate::identity::{CertInfo, now_text};

/// Where a process's certificates are: PEM files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// The mesh CA bundle: the CAs whose certificates peers must carry (a
    /// bundle may hold the old and the new CA while a CA is replaced).
    pub ca: Option<PathBuf>,
    /// This process's certificate, then any intermediates.
    pub cert: Option<PathBuf>,
    /// The certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

/// The raw contents of the files, compared to tell whether they changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Contents {
    ca: Option<Vec<u8>>,
    cert: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
}

/// What the files hold, parsed and checked.
#[derive(Debug)]
pub(crate) struct Material {
    pub roots: Option<Arc<RootCertStore>>,
    pub key: Option<Arc<CertifiedKey>>,
    pub cert_info: Option<CertInfo>,
}

fn read(path: Option<&Path>) -> Result<Option<Vec<u8>>, TlsError> {
    path.map(|p| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_owned(),
            source,
        })
    })
    .transpose()
}

impl TlsFiles {
    pub(crate) fn read(&self) -> Result<Contents, TlsError> {
        Ok(Contents {
            ca: read(self.ca.as_deref())?,
            cert: read(self.cert.as_deref())?,
            key: read(self.key.as_deref())?,
        })
    }

    /// The files' own certificate, read and checked as a handshake would:
    /// `None` without a certificate file. Controller replicas verify each
    /// other by the names on the certificate they share.
    ///
    /// # Errors
    /// A file cannot be read, or the certificate or key is unusable.
    pub fn certificate_info(&self) -> Result<Option<CertInfo>, TlsError> {
        Ok(self.parse(&self.read()?)?.cert_info)
    }

    /// Parses `contents` (read from these files). A certificate that is
    /// not valid now is refused: peers would refuse it anyway, and a
    /// clear error here beats handshake failures everywhere.
    pub(crate) fn parse(&self, contents: &Contents) -> Result<Material, TlsError> {
        let roots = match (&self.ca, &contents.ca) {
            (Some(path), Some(pem)) => Some(Arc::new(roots(path, pem)?)),
            _ => None,
        };
        let (key, cert_info) = match (&self.cert, &self.key, &contents.cert, &contents.key) {
            (Some(cert_path), Some(key_path), Some(cert), Some(key)) => {
                let (key, info) = certified_key(cert_path, cert, key_path, key)?;
                (Some(key), Some(info))
            }
            (Some(_), None, ..) => {
                return Err(TlsError::Missing(
                    "a certificate needs its key file too".to_owned(),
                ));
            }
            (None, Some(_), ..) => {
                return Err(TlsError::Missing(
                    "a key needs its certificate file too".to_owned(),
                ));
            }
            _ => (None, None),
        };
        Ok(Material {
            roots,
            key,
            cert_info,
        })
    }
}

fn certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoPem {
            path: path.to_owned(),
            what: "CERTIFICATE",
        });
    }
    Ok(certs)
}

fn roots(path: &Path, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certs(path, pem)? {
        store.add(cert).map_err(|e| TlsError::BadCertificate {
            path: path.to_owned(),
            detail: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(store)
}

fn certified_key(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
) -> Result<(Arc<CertifiedKey>, CertInfo), TlsError> {
    let chain = certs(cert_path, cert_pem)?;
    let info = chain
        .first()
        .and_then(CertInfo::parse)
        .ok_or_else(|| TlsError::BadCertificate {
            path: cert_path.to_owned(),
            detail: "the first certificate cannot be parsed as X.509".to_owned(),
        })?;
    if !info.valid_now() {
        return Err(TlsError::NotValidNow {
            path: cert_path.to_owned(),
            subject: info.subject.clone(),
            not_before: info.not_before_text.clone(),
            not_after: info.not_after_text.clone(),
            now: now_text(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPem {
            path: key_path.to_owned(),
            what: "PRIVATE KEY",
        },
        e => TlsError::BadPem {
            path: key_path.to_owned(),
            detail: e.to_string(),
        },
    })?;
    let signing = crate::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::BadKey {
            path: key_path.to_owned(),
            detail: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    // Catches a rotation caught halfway (new certificate, old key).
    certified.keys_match().map_err(|e| TlsError::KeyMismatch {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        detail: e.to_string(),
    })?;
    Ok((Arc::new(certified), info))
}
