//! The one error type of providers and of the routed storage API (re-exported by [`crate::storage`]). Every variant names the path and, where one is involved, the
//! provider; messages that came from a provider are passed through its [`Redactor`](crate::config::Redactor)
//! first, so secrets never reach a log or a user.

use crate::config::ConfigError;
use crate::providers::Provider;

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: not found on provider `{provider}`")]
    NotFound { provider: String, path: String },

    #[error("{path}: already exists on provider `{provider}`")]
    AlreadyExists { provider: String, path: String },

    #[error("{path}: permission denied by provider `{provider}` ({location}): {message}")]
    PermissionDenied {
        provider: String,
        location: String,
        path: String,
        message: String,
    },

    #[error("{path}: provider `{provider}` ({location}) rejected the credentials: {message}")]
    Unauthenticated {
        provider: String,
        location: String,
        path: String,
        message: String,
    },

    #[error("{path}: provider `{provider}` does not support {what}")]
    NotSupported {
        provider: String,
        path: String,
        what: String,
    },

    #[error("{path}: changed on provider `{provider}` while in use: {message}")]
    Precondition {
        provider: String,
        path: String,
        message: String,
    },

    #[error("{path}: {size} bytes exceeds the limit of {limit} bytes for this route")]
    TooLarge { path: String, size: u64, limit: u64 },

    #[error("{path}: no route matches this path and {config} has no [default] route")]
    NoRoute {
        path: String,
        /// The config file that lacks the route.
        config: String,
    },

    #[error("{path}: invalid {what}: {reason}")]
    Invalid {
        path: String,
        what: &'static str,
        reason: String,
    },

    /// The provider could not answer (connection refused or reset, timeout, 5xx after retries, or marked down):
    /// the one error that makes reads try a route's fallbacks.
    #[error("{path}: provider `{provider}` ({location}) is unavailable: {message}")]
    Unavailable {
        provider: String,
        location: String,
        path: String,
        message: String,
    },

    /// Anything else the provider reported.
    #[error("{path}: provider `{provider}` ({location}) failed: {message}")]
    Provider {
        provider: String,
        location: String,
        path: String,
        message: String,
    },

    #[error("provider `{provider}` ({kind}) could not be set up: {message}")]
    Setup {
        provider: String,
        kind: &'static str,
        message: String,
    },

    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl StorageError {
    /// Wraps an object_store error with the provider and mount path it concerns.
    pub fn from_store(provider: &Provider, path: &str, err: object_store::Error) -> Self {
        let name = provider.name.clone();
        let location = provider.location.clone();
        let path = path.to_string();
        let message = provider.redactor.redact(&root_cause(&err));
        use object_store::Error as E;
        if crate::providers::guard::is_outage(&err) {
            return StorageError::Unavailable {
                provider: name,
                location,
                path,
                message,
            };
        }
        // Some requests (listings among them) report a refusal only as a status in a generic error.
        let status = crate::providers::guard::http_status(&err.to_string());
        match err {
            E::Generic { .. } if status == Some(401) => StorageError::Unauthenticated {
                provider: name,
                location,
                path,
                message,
            },
            E::Generic { .. } if status == Some(403) => StorageError::PermissionDenied {
                provider: name,
                location,
                path,
                message,
            },
            E::NotFound { .. } => StorageError::NotFound {
                provider: name,
                path,
            },
            E::AlreadyExists { .. } => StorageError::AlreadyExists {
                provider: name,
                path,
            },
            E::PermissionDenied { .. } => StorageError::PermissionDenied {
                provider: name,
                location,
                path,
                message,
            },
            E::Unauthenticated { .. } => StorageError::Unauthenticated {
                provider: name,
                location,
                path,
                message,
            },
            E::NotSupported { .. } | E::NotImplemented { .. } => StorageError::NotSupported {
                provider: name,
                path,
                what: message,
            },
            E::Precondition { .. } | E::NotModified { .. } => StorageError::Precondition {
                provider: name,
                path,
                message,
            },
            _ => StorageError::Provider {
                provider: name,
                location,
                path,
                message,
            },
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }

    /// The provider could not answer: another provider holding the object may.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StorageError::Unavailable { .. })
    }

    /// What went wrong, without the provider and path (for output that names those already).
    pub fn cause(&self) -> String {
        match self {
            StorageError::Provider { message, .. }
            | StorageError::Unavailable { message, .. }
            | StorageError::PermissionDenied { message, .. }
            | StorageError::Unauthenticated { message, .. }
            | StorageError::Precondition { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    /// The provider the error concerns, if any.
    pub fn provider(&self) -> Option<&str> {
        match self {
            StorageError::NotFound { provider, .. }
            | StorageError::AlreadyExists { provider, .. }
            | StorageError::PermissionDenied { provider, .. }
            | StorageError::Unauthenticated { provider, .. }
            | StorageError::NotSupported { provider, .. }
            | StorageError::Precondition { provider, .. }
            | StorageError::Provider { provider, .. }
            | StorageError::Unavailable { provider, .. }
            | StorageError::Setup { provider, .. } => Some(provider),
            _ => None,
        }
    }
}

/// The error and its chain of causes on one line ("connection refused" is usually at the bottom).
fn root_cause(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
