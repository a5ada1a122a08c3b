//! The accepting side.

use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

use crate::reload::Reloadable;
use crate::{HandshakeError, Peer, TlsError, TlsFiles};

/// Whether clients must present a certificate from the mesh CA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// Clients are not asked for one.
    None,
    /// Clients may present one (verified against the CA bundle if they
    /// do); what a client without one may do is decided above TLS.
    Optional,
    /// The handshake fails without a valid client certificate (mTLS).
    #[default]
    Required,
}

impl std::str::FromStr for ClientAuth {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Self, TlsError> {
        match s {
            "none" => Ok(Self::None),
            "optional" => Ok(Self::Optional),
            "required" => Ok(Self::Required),
            other => Err(TlsError::Invalid(format!(
                "client auth {other:?}: use none, optional or required"
            ))),
        }
    }
}

impl std::fmt::Display for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Optional => "optional",
            Self::Required => "required",
        })
    }
}

/// A TLS acceptor whose certificate follows its files.
#[derive(Clone, Debug)]
pub struct ServerTls {
    config: Arc<Reloadable<ServerConfig>>,
    handshake_timeout: Duration,
}

impl ServerTls {
    /// Loads `files` (a certificate and key; the CA bundle too unless
    /// `client_auth` is `None`) and offers `alpn`.
    pub fn new(
        files: &TlsFiles,
        client_auth: ClientAuth,
        alpn: &[&[u8]],
    ) -> Result<Self, TlsError> {
        if files.cert.is_none() || files.key.is_none() {
            return Err(TlsError::Missing(
                "a TLS listener needs a certificate and a key file".to_owned(),
            ));
        }
        if client_auth != ClientAuth::None && files.ca.is_none() {
            return Err(TlsError::Missing(
                "verifying client certificates needs the CA bundle file".to_owned(),
            ));
        }
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let build = move |m: &crate::material::Material| {
            let key = m
                .key
                .clone()
                .ok_or_else(|| TlsError::Missing("no certificate loaded".to_owned()))?;
            let builder = ServerConfig::builder_with_provider(crate::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            let builder = match (client_auth, &m.roots) {
                (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
                (auth, Some(roots)) => {
                    let verifier = WebPkiClientVerifier::builder_with_provider(
                        Arc::clone(roots),
                        crate::provider(),
                    );
                    let verifier = if auth == ClientAuth::Optional {
                        verifier.allow_unauthenticated()
                    } else {
                        verifier
                    };
                    let verifier = verifier
                        .build()
                        .map_err(|e| TlsError::Config(e.to_string()))?;
                    builder.with_client_cert_verifier(verifier)
                }
            };
            let mut config =
                builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
            config.alpn_protocols.clone_from(&alpn);
            Ok(config)
        };
        Ok(Self {
            config: Arc::new(Reloadable::load("server", files.clone(), Box::new(build))?),
            handshake_timeout: Duration::from_secs(10),
        })
    }

    /// How long a client may take to finish the handshake [default: 10s].
    #[must_use]
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Runs the handshake on an accepted connection.
    pub async fn accept<IO>(&self, io: IO) -> Result<(TlsStream<IO>, Peer), HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.current());
        let stream = tokio::time::timeout(self.handshake_timeout, acceptor.accept(io))
            .await
            .map_err(|_| HandshakeError::timeout())?
            .map_err(|e| HandshakeError::classify(&e, "client"))?;
        let peer = Peer::from_chain(stream.get_ref().1.peer_certificates());
        Ok((stream, peer))
    }

    /// Re-reads the files now (see [`ServerTls::watch`]); whether a new
    /// certificate is in force.
    pub fn reload(&self) -> Result<bool, TlsError> {
        self.config.reload()
    }

    /// Re-reads the files every `every` for as long as this acceptor (or a
    /// clone) lives.
    pub fn watch(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        Reloadable::watch(&self.config, every)
    }
}
