//! Typed errors: every AWS failure names the operation, the resource and
//! AWS's own code and message.

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata};

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// An AWS call failed.
    #[error("{operation} {resource}: {message}")]
    Aws {
        operation: &'static str,
        resource: String,
        /// AWS's error code, when it sent one.
        code: Option<String>,
        message: String,
    },
    /// A setting is invalid.
    #[error("invalid setting {name}: {reason}")]
    Config { name: &'static str, reason: String },
    /// A template does not render.
    #[error("template {template}: {reason}")]
    Template {
        template: &'static str,
        reason: String,
    },
    /// The account is not in a state `up` can use (e.g. no subnet).
    #[error("{0}")]
    State(String),
    /// The operator's local secrets directory could not be read or written.
    #[error("{path}: {source}")]
    Local {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// Generating the mesh certificates (or writing them) failed.
    #[error(transparent)]
    Certificates(#[from] ecsmesh_tls::generate::GenerateError),
    /// The local images to push are missing or inconsistent, or pushing failed.
    #[error("images: {0}")]
    Images(String),
    /// The operating system's random number generator failed.
    #[error("no random bytes for a token: {0}")]
    Random(String),
}

impl DeployError {
    pub(crate) fn local(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| Self::Local { path, source }
    }

    pub(crate) fn aws<E>(operation: &'static str, resource: impl Into<String>, err: &E) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error,
    {
        let code = err.code().map(str::to_owned);
        let message = match (err.code(), err.message()) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c.to_owned(),
            (None, Some(m)) => m.to_owned(),
            (None, None) => DisplayErrorContext(err).to_string(),
        };
        Self::Aws {
            operation,
            resource: resource.into(),
            code,
            message,
        }
    }

    /// AWS's error code, if this is an AWS error that had one.
    pub fn aws_code(&self) -> Option<&str> {
        match self {
            Self::Aws { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

pub type Result<T, E = DeployError> = std::result::Result<T, E>;
