//! A mesh CA and the certificates it issues (rcgen): what
//! `ecsmeshctl certs init` writes, and what tests use.
//!
//! Files are replaced atomically (a temporary file, then a rename), so a
//! process reloading them never reads half a file.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// Creating or writing certificates.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("generating a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A mesh CA: its certificate and key.
#[derive(Debug)]
pub struct MeshCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// One certificate to issue.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    pub common_name: String,
    /// Subject alternative names: DNS names (wildcards allowed) or IP
    /// addresses.
    pub names: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// May serve TLS (serverAuth).
    pub server: bool,
    /// May authenticate as a client (clientAuth).
    pub client: bool,
}

impl LeafSpec {
    /// Valid from an hour ago (clock skew) for `days`, for both roles.
    pub fn new(common_name: &str, names: &[&str], days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            common_name: common_name.to_owned(),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
            server: true,
            client: true,
        }
    }
}

/// A certificate and its key, as PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl MeshCa {
    /// A new CA valid for `days`.
    pub fn new(common_name: &str, days: i64) -> Result<Self, GenerateError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(days);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// An existing CA, from its certificate and key (PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, GenerateError> {
        let key = KeyPair::from_pem(key_pem)?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            issuer: Issuer::from_ca_cert_pem(cert_pem, key)?,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a certificate with a fresh key.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Issued, GenerateError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(spec.names.clone())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, spec.common_name.as_str());
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        if spec.server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if spec.client {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// What `ecsmeshctl certs init` creates.
#[derive(Clone, Debug)]
pub struct MeshCertsSpec {
    /// Agents to issue certificates for: `agent-1` … `agent-N`.
    pub agents: usize,
    /// The controller certificate's names (what agents and the CLI verify).
    pub controller_names: Vec<String>,
    /// The agents' names: the first is what outgoing agents verify
    /// (`--l2l-server-name`); add e.g. `*.svc.mesh` for a `{service}.svc.mesh`
    /// template.
    pub agent_names: Vec<String>,
    /// The operator's client certificate name (an allowed admin identity).
    pub admin_name: String,
    /// Validity of the CA, in days.
    pub ca_days: i64,
    /// Validity of the other certificates, in days.
    pub days: i64,
}

impl Default for MeshCertsSpec {
    fn default() -> Self {
        Self {
            agents: 2,
            controller_names: vec![
                "ecsmesh-controller".to_owned(),
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
            ],
            agent_names: vec!["ecsmesh-agent".to_owned()],
            admin_name: "ecsmesh-admin".to_owned(),
            ca_days: 3650,
            days: 90,
        }
    }
}

/// The CA file names in a certificate directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";

/// Writes a mesh CA (or reuses the one in `dir`) and certificates for the
/// controller, `agents` agents and an operator into `dir`; returns the
/// files written. Running it again re-issues every certificate under the
/// same CA (a rotation).
pub fn write_mesh_certs(dir: &Path, spec: &MeshCertsSpec) -> Result<Vec<PathBuf>, GenerateError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| GenerateError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let (ca_cert, ca_key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    let mut written = Vec::new();
    let ca = if ca_cert.exists() && ca_key.exists() {
        let cert = std::fs::read_to_string(&ca_cert).map_err(io(&ca_cert))?;
        let key = std::fs::read_to_string(&ca_key).map_err(io(&ca_key))?;
        MeshCa::from_pem(&cert, &key)?
    } else {
        // A distinct name per CA: logs and `openssl x509` tell them apart.
        let name = format!(
            "ecsmesh mesh CA {}",
            OffsetDateTime::now_utc().unix_timestamp()
        );
        let ca = MeshCa::new(&name, spec.ca_days)?;
        write_file(&ca_key, &ca.key_pem(), true)?;
        write_file(&ca_cert, ca.cert_pem(), false)?;
        written.extend([ca_cert, ca_key]);
        ca
    };
    let mut leaves = vec![(
        "controller".to_owned(),
        LeafSpec::new(
            "ecsmesh-controller",
            &as_strs(&spec.controller_names),
            spec.days,
        ),
    )];
    for i in 1..=spec.agents {
        let file = format!("agent-{i}");
        leaves.push((
            file.clone(),
            LeafSpec::new(
                &format!("ecsmesh-{file}"),
                &as_strs(&spec.agent_names),
                spec.days,
            ),
        ));
    }
    let mut admin = LeafSpec::new(&spec.admin_name, &[spec.admin_name.as_str()], spec.days);
    admin.server = false;
    leaves.push(("admin".to_owned(), admin));
    for (file, leaf) in leaves {
        let issued = ca.issue(&leaf)?;
        let (cert, key) = (
            dir.join(format!("{file}.pem")),
            dir.join(format!("{file}-key.pem")),
        );
        // The key first: a reader that sees the new certificate before
        // its key refuses the pair and keeps the old one until both are in.
        write_file(&key, &issued.key_pem, true)?;
        write_file(&cert, &issued.cert_pem, false)?;
        written.extend([cert, key]);
    }
    Ok(written)
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Writes `contents` to `path` atomically; keys are readable by the owner
/// only.
pub fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), GenerateError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let err = |source| GenerateError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)
}
