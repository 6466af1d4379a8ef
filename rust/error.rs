//! One error type for the whole core. Each variant maps to one Python exception
//! class (a subclass of `pvrs.PvrsError`, see `python/pvrs/errors.py`) in `py.rs`.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A caller passed arrays or arguments that break the documented contract.
    #[error("{0}")]
    InvalidArgument(String),
    /// A character span could not be mapped to tokens (names the sample).
    #[error("{0}")]
    Span(String),
    /// A mask strategy selected no tokens or is unsupported for the template.
    #[error("{0}")]
    Mask(String),
    /// A safetensors file is truncated, malformed or holds the wrong tensor.
    #[error("{0}")]
    Artifact(String),
    /// A manifest is malformed or disagrees with its tensors.
    #[error("{0}")]
    Manifest(String),
    /// A persona id is not a safe file name.
    #[error("{0}")]
    PersonaId(String),
    /// A vector holds NaN or Inf.
    #[error("{0}")]
    NonFinite(String),
    /// Writing a parquet dataset failed.
    #[error("{0}")]
    Packaging(String),
    /// A bug in pvrs (for example a contained panic).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Name of the matching class in `pvrs.errors`.
    pub fn python_class(&self) -> &'static str {
        match self {
            Error::Io { .. } => "PvrsIOError",
            Error::InvalidArgument(_) => "InvalidArgumentError",
            Error::Span(_) => "SpanError",
            Error::Mask(_) => "MaskError",
            Error::Artifact(_) => "ArtifactError",
            Error::Manifest(_) => "ManifestError",
            Error::PersonaId(_) => "PersonaIdError",
            Error::NonFinite(_) => "NonFiniteError",
            Error::Packaging(_) => "PackagingError",
            Error::Internal(_) => "InternalError",
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_error_names_the_path() {
        let e = Error::io(
            "/tmp/x.safetensors",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert!(e.to_string().starts_with("/tmp/x.safetensors: "));
        assert_eq!(e.python_class(), "PvrsIOError");
    }
}
