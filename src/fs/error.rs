//! Filesystem errors and the one table that maps them to errno. The filesystem core returns [`FsError`], which
//! carries the errors of the layers below it as they are (a provider's [`StorageError`], a read's [`ReadError`],
//! a write's [`WriteError`]); the FUSE layer calls [`FsError::errno`] and nothing else decides an errno.

use crate::read::ReadError;
use crate::storage::StorageError;
use crate::write::WriteError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
    #[error("stale file handle")]
    StaleHandle,
    #[error("read-only file system")]
    ReadOnly,
    #[error("operation not supported: {0}")]
    NotSupported(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("file too large")]
    TooLarge,
    #[error("directory not empty")]
    NotEmpty,
    #[error("file exists")]
    Exists,
    #[error("cannot move between providers")]
    CrossDevice,
    /// A name component or a whole key longer than the provider holding it accepts.
    #[error("file name too long: {0}")]
    NameTooLong(String),
    #[error("no such extended attribute")]
    NoAttribute,
    /// Extended attributes past what the provider's object metadata holds.
    #[error("extended attributes too large: {0}")]
    AttributesTooLarge(String),
    /// An extended attribute namespace zmount does not serve (security.*, system.*, trusted.*).
    #[error("extended attributes of this namespace are not supported")]
    ForeignAttribute,
    #[error("extended attribute {0} is read-only")]
    ReadOnlyAttribute(String),
    #[error("local I/O error: {0}")]
    Local(#[from] std::io::Error),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Write(#[from] WriteError),
    /// One failure shared by every request that waited on the same fetch.
    #[error(transparent)]
    Shared(std::sync::Arc<FsError>),
}

pub type FsResult<T> = Result<T, FsError>;

/// Whether a provider's error text says a name or key was too long.
fn names_too_long(message: &str) -> bool {
    ["KeyTooLong", "File name too long", "name is too long"]
        .iter()
        .any(|needle| message.contains(needle))
}

impl FsError {
    /// The errno a program sees for this error.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotADirectory => libc::ENOTDIR,
            FsError::IsADirectory => libc::EISDIR,
            FsError::StaleHandle => libc::ESTALE,
            FsError::ReadOnly => libc::EROFS,
            FsError::NotSupported(_) => libc::ENOTSUP,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::TooLarge => libc::EFBIG,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::Exists => libc::EEXIST,
            // A rename whose source and target live on different providers: `mv` then copies and deletes.
            FsError::CrossDevice => libc::EXDEV,
            FsError::NameTooLong(_) => libc::ENAMETOOLONG,
            FsError::NoAttribute => libc::ENODATA,
            FsError::AttributesTooLarge(_) => libc::E2BIG,
            // ENOTSUP rather than ENODATA: tools such as `ls -l` then stop asking for the rest of the filesystem
            // (they remember "unsupported" per device), where ENODATA would cost two requests per file.
            FsError::ForeignAttribute => libc::ENOTSUP,
            FsError::ReadOnlyAttribute(_) => libc::EPERM,
            FsError::Local(e) => match e.raw_os_error() {
                Some(code) => code,
                None => libc::EIO,
            },
            FsError::Shared(inner) => inner.errno(),
            FsError::Read(e) => read_errno(e),
            FsError::Write(e) => write_errno(e),
            FsError::Storage(e) => storage_errno(e),
        }
    }

    /// The provider could not answer (see [`StorageError::is_unavailable`]); a fallback may.
    pub fn is_unavailable(&self) -> bool {
        match self {
            FsError::Storage(e) => e.is_unavailable(),
            FsError::Write(e) => e.is_unavailable(),
            FsError::Read(e) => e.is_unavailable(),
            FsError::Shared(inner) => inner.is_unavailable(),
            _ => false,
        }
    }

    /// No such object (on the provider asked).
    pub fn is_not_found(&self) -> bool {
        match self {
            FsError::NotFound => true,
            FsError::Storage(e) => e.is_not_found(),
            FsError::Write(WriteError::Storage(e)) => e.is_not_found(),
            FsError::Read(e) => e.is_not_found(),
            FsError::Shared(inner) => inner.is_not_found(),
            _ => false,
        }
    }

    /// Whether the error is worth a log line (expected answers like ENOENT are not).
    pub fn is_noteworthy(&self) -> bool {
        !matches!(
            self,
            FsError::NotFound
                | FsError::NotADirectory
                | FsError::IsADirectory
                | FsError::NoAttribute
                | FsError::ForeignAttribute
        ) && !matches!(self, FsError::Storage(StorageError::NotFound { .. }))
    }
}

/// The errno of a provider's failure.
fn storage_errno(e: &StorageError) -> i32 {
    use StorageError as S;
    match e {
        S::NotFound { .. } => libc::ENOENT,
        // The mount never writes with create-only semantics, so a provider saying "already exists" (Azure
        // answers 409 for unrelated conflicts, such as a full store) is a failed write, not EEXIST.
        S::AlreadyExists { .. } => libc::EIO,
        S::PermissionDenied { .. } | S::Unauthenticated { .. } => libc::EACCES,
        S::NotSupported { .. } => libc::ENOTSUP,
        // The object changed under an open handle: the bytes it promised are gone.
        S::Precondition { .. } => libc::ESTALE,
        S::TooLarge { .. } => libc::EFBIG,
        S::NoRoute { .. } => libc::ENOENT,
        S::Invalid { .. } => libc::EINVAL,
        // Every provider that could serve the request was down: EIO, never a silent ENOENT.
        // S3's KeyTooLongError, Azure's and GCS's name-length answers, a local ENAMETOOLONG.
        S::Provider { message, .. } if names_too_long(message) => libc::ENAMETOOLONG,
        S::Provider { .. } | S::Unavailable { .. } | S::Setup { .. } | S::Config(_) => libc::EIO,
    }
}

/// The errno of a failed write: the local disk's own (ENOSPC, EIO), EFBIG past the size limit, or the provider's.
fn write_errno(e: &WriteError) -> i32 {
    match e {
        WriteError::Local(e) => e.raw_os_error().unwrap_or(libc::EIO),
        WriteError::TooLarge => libc::EFBIG,
        WriteError::Storage(e) => storage_errno(e),
        WriteError::Failed(inner) => write_errno(inner),
    }
}

/// The errno of a failed read.
fn read_errno(e: &ReadError) -> i32 {
    match e {
        ReadError::Storage(e) => storage_errno(e),
        // The object changed under an open handle: the bytes it promised are gone.
        ReadError::Stale => libc::ESTALE,
        ReadError::Shared(inner) => read_errno(inner),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_table() {
        let provider = |message: &str| StorageError::Provider {
            provider: "s3".into(),
            location: "http://x".into(),
            path: "p".into(),
            message: message.into(),
        };
        assert_eq!(FsError::NotFound.errno(), libc::ENOENT);
        assert_eq!(
            FsError::from(provider("connection refused")).errno(),
            libc::EIO
        );
        let denied = StorageError::PermissionDenied {
            provider: "s3".into(),
            location: "x".into(),
            path: "p".into(),
            message: "m".into(),
        };
        assert_eq!(FsError::from(denied).errno(), libc::EACCES);
        assert_eq!(
            FsError::from(StorageError::NotSupported {
                provider: "l".into(),
                path: "p".into(),
                what: "w".into()
            })
            .errno(),
            libc::ENOTSUP
        );
        assert_eq!(
            FsError::Local(std::io::Error::from_raw_os_error(libc::ENOSPC)).errno(),
            libc::ENOSPC
        );
        // The errors of the layers below keep their meaning through the table.
        let full = WriteError::Local(std::io::Error::from_raw_os_error(libc::ENOSPC));
        let failed = WriteError::Failed(std::sync::Arc::new(full));
        assert_eq!(FsError::from(failed).errno(), libc::ENOSPC);
        assert_eq!(FsError::from(WriteError::TooLarge).errno(), libc::EFBIG);
        let shared = ReadError::Shared(std::sync::Arc::new(ReadError::Stale));
        assert_eq!(FsError::from(shared).errno(), libc::ESTALE);
        let gone = ReadError::from(provider("connection refused"));
        assert_eq!(FsError::from(gone).errno(), libc::EIO);
    }
}
