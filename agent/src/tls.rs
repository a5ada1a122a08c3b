//! TLS on the hops the agent owns.
//!
//! - [`L2lTls`]: the linker-to-linker hop's certificates. The incoming port
//!   terminates TLS and, by default, requires a client certificate from the
//!   mesh CA; refused handshakes are logged and counted
//!   (`ecsmesh_agent_tls_handshake_failures_total`). The outgoing side's
//!   connections (verifying the configured name, fixed or filled per
//!   destination) are [`crate::proxy::upstream`]'s, made with
//!   [`L2lTls::client`].
//! - [`ControllerEndpoint`]: the controller stream, over TLS when the
//!   controller's address is `https://`.
//!
//! Certificates are re-read when their files change; connections already
//! made keep theirs.

use std::sync::Arc;
use std::time::Duration;

use ecsmesh_tls::{ClientTls, HttpsConnector, ServerName, ServerNameTemplate, ServerTls, TlsError};
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::transport::{Channel, Endpoint};

use crate::config::Config;
use crate::metrics::{Metrics, TlsFailureLabels};

/// The controller's endpoint and the linker-to-linker hop's TLS, from the
/// configuration; certificate problems stop the start.
pub fn setup(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<(Vec<ControllerEndpoint>, Option<Arc<L2lTls>>)> {
    use anyhow::Context as _;
    let controllers = ControllerEndpoint::all(config).context("TLS to the controller")?;
    // A token that cannot be read stops the start; later reads are retried.
    if let Some(first) = controllers.first() {
        first.bearer()?;
    }
    let l2l =
        L2lTls::new(config, Arc::clone(metrics)).context("TLS on the linker-to-linker hop")?;
    Ok((controllers, l2l.map(Arc::new)))
}

/// The linker-to-linker hop's TLS: the incoming port's acceptor, and the
/// outgoing side's certificates and the name remote agents must prove.
#[derive(Debug)]
pub struct L2lTls {
    server: ServerTls,
    client: ClientTls,
    names: ServerNameTemplate,
    metrics: Arc<Metrics>,
}

impl L2lTls {
    /// The hop's TLS if the configuration turns it on; a certificate
    /// problem is an error (the agent does not start).
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Option<Self>, TlsError> {
        let tls = &config.tls;
        if !tls.l2l {
            return Ok(None);
        }
        let server = ServerTls::new(&tls.files, tls.l2l_client_auth, ecsmesh_tls::ALPN_H2_HTTP1)?;
        let client = ClientTls::new(&tls.files, &[])?;
        server.watch(tls.reload_interval);
        client.watch(tls.reload_interval);
        tracing::info!(server_name = %tls.l2l_server_name, client_auth = %tls.l2l_client_auth,
            "TLS on the linker-to-linker hop");
        Ok(Some(Self {
            server,
            client,
            names: tls.l2l_server_name.clone(),
            metrics,
        }))
    }

    /// The outgoing side's certificates (reloaded as the files change).
    pub fn client(&self) -> &ClientTls {
        &self.client
    }

    /// The name remote agents must prove: fixed, or a template.
    pub fn names(&self) -> &ServerNameTemplate {
        &self.names
    }

    /// The handshake on an accepted incoming connection; a refusal is
    /// logged (a certificate problem as a warning, with its reason) and
    /// counted.
    pub async fn accept<IO>(&self, io: IO) -> Option<ecsmesh_tls::ServerTlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        match self.server.accept(io).await {
            Ok((stream, _peer)) => Some(stream),
            Err(e) => {
                let reason = e.failure.as_str();
                self.metrics
                    .tls_handshake_failures
                    .get_or_create(&TlsFailureLabels {
                        listener: "incoming",
                        reason,
                    })
                    .inc();
                if e.failure.is_certificate_problem() {
                    tracing::warn!(
                        listener = "incoming",
                        reason,
                        "TLS handshake refused: {}",
                        e.message
                    );
                } else {
                    tracing::debug!(
                        listener = "incoming",
                        reason,
                        "TLS handshake failed: {}",
                        e.message
                    );
                }
                None
            }
        }
    }

    /// Re-reads the certificate files now (they are also checked on the
    /// configured interval); whether anything changed.
    pub fn reload(&self) -> Result<bool, TlsError> {
        Ok(self.server.reload()? | self.client.reload()?)
    }
}

/// Where the controller is, and how to reach it: over TLS (verifying its
/// name) when its address is `https://`.
#[derive(Clone, Debug)]
pub struct ControllerEndpoint {
    url: String,
    tls: Option<(ClientTls, ServerName<'static>)>,
    token_file: Option<std::path::PathBuf>,
}

/// The controller token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the controller token: {0}")]
    File(#[from] ecsmesh_config::ConfigError),
    #[error("the controller token file {0} is not one line of visible ASCII")]
    NotAscii(String),
}

impl ControllerEndpoint {
    /// Every controller replica `config.controller` names (a comma-separated
    /// list; each may be a DNS name, resolved again at every connection).
    ///
    /// # Errors
    /// A certificate problem, or no address at all.
    pub fn all(config: &Config) -> Result<Vec<Self>, TlsError> {
        // One client certificate (and one watcher of its files) for every
        // https replica.
        let mut client = None;
        let all = config
            .controller
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|address| Self::new(config, address, &mut client))
            .collect::<Result<Vec<_>, _>>()?;
        if all.is_empty() {
            return Err(TlsError::Missing(
                "no controller address (--controller)".to_owned(),
            ));
        }
        Ok(all)
    }

    fn new(
        config: &Config,
        address: &str,
        client: &mut Option<ClientTls>,
    ) -> Result<Self, TlsError> {
        let url = if address.contains("://") {
            address.to_owned()
        } else {
            format!("http://{address}")
        };
        let token_file = config.controller_token_file.clone();
        if !url.starts_with("https://") {
            return Ok(Self {
                url,
                tls: None,
                token_file,
            });
        }
        let files = &config.tls.files;
        if files.ca.is_none() {
            return Err(TlsError::Missing(format!(
                "the controller at {url} needs --tls-ca to verify its certificate"
            )));
        }
        let client = if let Some(c) = client {
            c.clone()
        } else {
            let c = ClientTls::new(files, ecsmesh_tls::ALPN_H2)?;
            c.watch(config.tls.reload_interval);
            client.insert(c).clone()
        };
        let name = match &config.tls.controller_server_name {
            Some(name) => name.clone(),
            None => url
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_owned()))
                .unwrap_or_default(),
        };
        let name = ServerName::try_from(name.clone()).map_err(|e| TlsError::ServerName {
            name,
            detail: e.to_string(),
        })?;
        Ok(Self {
            url,
            tls: Some((client, name)),
            token_file,
        })
    }

    /// The stream's `authorization` value, read from the token file now
    /// (a rotated token is used from the next connection on).
    ///
    /// # Errors
    /// The file cannot be read or holds no usable token.
    pub fn bearer(&self) -> Result<Option<tonic::metadata::AsciiMetadataValue>, TokenError> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let token = ecsmesh_config::read_token(path)?;
        format!("Bearer {token}")
            .parse()
            .map(Some)
            .map_err(|_| TokenError::NotAscii(path.display().to_string()))
    }

    /// Opens a channel (the controller stream's keepalives included).
    pub async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(self.url.clone())?
            .connect_timeout(Duration::from_secs(2))
            // A replica that goes silent (its instance gone, a partition)
            // is noticed within 5 s; one that exits closes the connection
            // and is noticed at once. Either way the next replica is next.
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true);
        match &self.tls {
            Some((client, name)) => {
                endpoint
                    .connect_with_connector(HttpsConnector::new(client.clone(), name.clone(), None))
                    .await
            }
            None => endpoint.connect().await,
        }
    }
}

impl std::fmt::Display for ControllerEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}
