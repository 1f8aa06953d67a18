//! Errors for bad input: every one names where (file, document) and which field.

use std::fmt;

/// Where an object came from: a file (or other source name) and its document index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub source: String,
    /// 0-based index of the YAML document (or of the object in a list).
    pub document: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, document {}", self.source, self.document)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: field `{field}`: {message}")]
pub struct InputError {
    pub origin: Origin,
    pub field: String,
    pub message: String,
}

impl InputError {
    pub fn new(
        origin: &Origin,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> InputError {
        InputError {
            origin: origin.clone(),
            field: field.into(),
            message: message.into(),
        }
    }
}
