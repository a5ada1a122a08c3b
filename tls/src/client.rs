//! The connecting side, and the names it verifies.

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;

use crate::reload::Reloadable;
use crate::{HandshakeError, TlsError, TlsFiles};

/// A TLS connector whose CA bundle and client certificate follow their
/// files.
#[derive(Clone, Debug)]
pub struct ClientTls {
    config: Arc<Reloadable<ClientConfig>>,
}

impl ClientTls {
    /// Loads `files`: the CA bundle servers are verified against, and, for
    /// mTLS, a certificate and key to present.
    pub fn new(files: &TlsFiles, alpn: &[&[u8]]) -> Result<Self, TlsError> {
        if files.ca.is_none() {
            return Err(TlsError::Missing(
                "a TLS client needs the CA bundle file to verify servers".to_owned(),
            ));
        }
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let build = move |m: &crate::material::Material| {
            let roots = m
                .roots
                .clone()
                .ok_or_else(|| TlsError::Missing("no CA bundle loaded".to_owned()))?;
            let builder = ClientConfig::builder_with_provider(crate::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Config(e.to_string()))?
                .with_root_certificates(roots);
            let mut config = match &m.key {
                Some(key) => builder.with_client_cert_resolver(Arc::new(
                    rustls::sign::SingleCertAndKey::from(Arc::clone(key)),
                )),
                None => builder.with_no_client_auth(),
            };
            config.alpn_protocols.clone_from(&alpn);
            Ok(config)
        };
        Ok(Self {
            config: Arc::new(Reloadable::load("client", files.clone(), Box::new(build))?),
        })
    }

    /// Runs the handshake on a connected stream, verifying `name`.
    pub async fn connect<IO>(
        &self,
        name: ServerName<'static>,
        io: IO,
    ) -> Result<TlsStream<IO>, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        tokio_rustls::TlsConnector::from(self.config.current())
            .connect(name, io)
            .await
            .map_err(|e| HandshakeError::classify(&e, "server"))
    }

    /// Re-reads the files now; whether a new configuration is in force.
    pub fn reload(&self) -> Result<bool, TlsError> {
        self.config.reload()
    }

    /// Re-reads the files every `every` for as long as this connector (or
    /// a clone) lives.
    pub fn watch(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        Reloadable::watch(&self.config, every)
    }
}

/// The server name to verify: fixed (`ecsmesh-agent`) or filled per
/// destination from placeholders (`{service}.mesh`), like Linkerd's
/// `commonName: "{service}"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerNameTemplate {
    text: String,
    /// Set when the template has no placeholder.
    fixed: Option<ServerName<'static>>,
}

enum Piece<'a> {
    Text(&'a str),
    Var(&'a str),
}

/// Splits `{name}` placeholders from the text between them.
fn pieces(text: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            out.push(Piece::Text(&rest[..open]));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| "a '{' is not closed".to_owned())?;
        out.push(Piece::Var(&after[..close]));
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err("a '}' has no '{'".to_owned());
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

fn server_name(name: String) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.clone()).map_err(|e| TlsError::ServerName {
        name,
        detail: e.to_string(),
    })
}

impl ServerNameTemplate {
    /// The placeholders a template may use.
    pub const PLACEHOLDERS: &[&str] = &["service", "cluster"];

    pub fn parse(text: &str) -> Result<Self, TlsError> {
        let bad = |detail: String| TlsError::ServerName {
            name: text.to_owned(),
            detail,
        };
        let parts = pieces(text).map_err(bad)?;
        for p in &parts {
            if let Piece::Var(v) = p
                && !Self::PLACEHOLDERS.contains(v)
            {
                return Err(bad(format!(
                    "unknown placeholder {{{v}}}: use {{service}} or {{cluster}}"
                )));
            }
        }
        let fixed = if parts.iter().all(|p| matches!(p, Piece::Text(_))) {
            Some(server_name(text.to_owned())?)
        } else {
            None
        };
        Ok(Self {
            text: text.to_owned(),
            fixed,
        })
    }

    /// The name, when the template has no placeholder.
    pub fn fixed(&self) -> Option<&ServerName<'static>> {
        self.fixed.as_ref()
    }

    /// The name for one destination; `value` gives each placeholder's value.
    pub fn render<'a>(
        &self,
        value: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<ServerName<'static>, TlsError> {
        if let Some(fixed) = &self.fixed {
            return Ok(fixed.clone());
        }
        let mut name = String::with_capacity(self.text.len() + 16);
        // Parsed once already in `parse`: cannot fail here.
        for p in pieces(&self.text).unwrap_or_default() {
            match p {
                Piece::Text(t) => name.push_str(t),
                Piece::Var(v) => {
                    name.push_str(value(v).ok_or_else(|| TlsError::ServerName {
                        name: self.text.clone(),
                        detail: format!("no value for {{{v}}} for this destination"),
                    })?);
                }
            }
        }
        server_name(name.to_ascii_lowercase())
    }
}

impl std::fmt::Display for ServerNameTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for ServerNameTemplate {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Self, TlsError> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_and_templated_names() {
        let fixed = ServerNameTemplate::parse("ecsmesh-agent").unwrap();
        assert!(fixed.fixed().is_some());
        let t = ServerNameTemplate::parse("{service}.{cluster}.mesh").unwrap();
        assert!(t.fixed().is_none());
        let name = t
            .render(|v| match v {
                "service" => Some("World"),
                "cluster" => Some("demo"),
                _ => None,
            })
            .unwrap();
        assert_eq!(name.to_str(), "world.demo.mesh");
        assert!(ServerNameTemplate::parse("{nope}.mesh").is_err());
        assert!(ServerNameTemplate::parse("{service.mesh").is_err());
        assert!(ServerNameTemplate::parse("bad name").is_err());
        // A value that makes no DNS name is an error for that destination.
        assert!(t.render(|_| Some("a b")).is_err());
    }
}
