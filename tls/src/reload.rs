//! A rustls config rebuilt when its files change. Handshakes take the
//! config in force when they start, so a swap never disturbs a connection
//! already set up.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::material::{Contents, Material};
use crate::{TlsError, TlsFiles};

type Build<C> = dyn Fn(&Material) -> Result<C, TlsError> + Send + Sync;

pub(crate) struct Reloadable<C> {
    /// For logs: "server" or "client".
    role: &'static str,
    files: TlsFiles,
    build: Box<Build<C>>,
    /// The file contents the current config was built from.
    loaded: Mutex<Contents>,
    current: ArcSwap<C>,
}

impl<C> std::fmt::Debug for Reloadable<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloadable")
            .field("role", &self.role)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl<C: Send + Sync + 'static> Reloadable<C> {
    /// Loads the files and builds the first config; any problem is an error.
    pub(crate) fn load(
        role: &'static str,
        files: TlsFiles,
        build: Box<Build<C>>,
    ) -> Result<Self, TlsError> {
        let contents = files.read()?;
        let material = files.parse(&contents)?;
        log_loaded(role, &files, &material, false);
        let config = build(&material)?;
        Ok(Self {
            role,
            files,
            build,
            loaded: Mutex::new(contents),
            current: ArcSwap::from_pointee(config),
        })
    }

    pub(crate) fn current(&self) -> Arc<C> {
        self.current.load_full()
    }

    /// Re-reads the files; installs a new config if they changed and are
    /// valid. Returns whether a new config is in force. On an error the
    /// current config stays (a rotation caught halfway is retried at the
    /// next check).
    pub(crate) fn reload(&self) -> Result<bool, TlsError> {
        let contents = self.files.read()?;
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        if *loaded == contents {
            return Ok(false);
        }
        let material = self.files.parse(&contents)?;
        let config = (self.build)(&material)?;
        self.current.store(Arc::new(config));
        *loaded = contents;
        log_loaded(self.role, &self.files, &material, true);
        Ok(true)
    }

    /// Checks the files every `every` until `this` is dropped.
    pub(crate) fn watch(this: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(this);
        tokio::spawn(async move {
            let mut last_error: Option<String> = None;
            loop {
                tokio::time::sleep(every).await;
                let Some(this) = weak.upgrade() else { return };
                let role = this.role;
                let result = tokio::task::spawn_blocking(move || this.reload()).await;
                match result {
                    Ok(Ok(_)) => last_error = None,
                    Ok(Err(e)) => {
                        // Said once per distinct problem, not every few seconds.
                        let text = e.to_string();
                        if last_error.as_deref() != Some(text.as_str()) {
                            tracing::error!(role, error = %text, "TLS files changed but cannot be used; keeping the certificate in force");
                        }
                        last_error = Some(text);
                    }
                    Err(_) => return,
                }
            }
        })
    }
}

fn log_loaded(role: &'static str, files: &TlsFiles, material: &Material, reloaded: bool) {
    let cert = files.cert.as_ref().map(|p| p.display().to_string());
    let ca = files.ca.as_ref().map(|p| p.display().to_string());
    if let Some(info) = &material.cert_info {
        tracing::info!(
            role,
            reloaded,
            cert = cert.as_deref().unwrap_or("-"),
            ca = ca.as_deref().unwrap_or("-"),
            subject = %info.subject,
            identities = ?info.identities,
            not_after = %info.not_after_text,
            "TLS certificate loaded"
        );
        // A week's notice before peers start refusing it.
        if info.seconds_left() < 7 * 24 * 3600 {
            tracing::warn!(role, cert = cert.as_deref().unwrap_or("-"), not_after = %info.not_after_text,
                    "TLS certificate expires within a week: rotate it");
        }
    } else {
        tracing::info!(
            role,
            reloaded,
            ca = ca.as_deref().unwrap_or("-"),
            "TLS CA bundle loaded"
        );
    }
}
