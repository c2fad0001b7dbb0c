//! The shared error vocabulary.
//!
//! The same words appear in the engine's errors, in dead-letter records, in the
//! stage protocol's gRPC statuses and in both stage SDKs, so a failure reads
//! the same wherever it is seen.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A stable, language-neutral error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// A row could not be parsed (bad field count, unparseable value, invalid UTF-8).
    Malformed,
    /// A value has the wrong type for its declared column.
    TypeMismatch,
    /// A row breaks a declared constraint (not-null, check).
    ConstraintViolation,
    /// A row was rejected by a stage's own validation rule.
    Rejected,
    /// A row's event time is behind the watermark: the windows it belongs
    /// to were already emitted.
    Late,
    /// The input schema is not what the stage's contract declares.
    SchemaMismatch,
    /// A request or configuration is invalid.
    InvalidArgument,
    /// A deadline passed (batch timeout, health check).
    Timeout,
    /// A peer or store could not be reached; retrying may help.
    Unavailable,
    /// The stage or engine hit a bug.
    Internal,
}

impl ErrorCode {
    /// Every code, in documentation order.
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::Malformed,
        ErrorCode::TypeMismatch,
        ErrorCode::ConstraintViolation,
        ErrorCode::Rejected,
        ErrorCode::Late,
        ErrorCode::SchemaMismatch,
        ErrorCode::InvalidArgument,
        ErrorCode::Timeout,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The wire spelling, e.g. `TYPE_MISMATCH`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "MALFORMED",
            ErrorCode::TypeMismatch => "TYPE_MISMATCH",
            ErrorCode::ConstraintViolation => "CONSTRAINT_VIOLATION",
            ErrorCode::Rejected => "REJECTED",
            ErrorCode::Late => "LATE",
            ErrorCode::SchemaMismatch => "SCHEMA_MISMATCH",
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    /// Whether retrying the same work may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorCode::Timeout | ErrorCode::Unavailable)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorCode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown error code `{s}`; known codes: {}",
                    ErrorCode::ALL.map(|c| c.as_str()).join(", ")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_as_text_and_json() {
        for code in ErrorCode::ALL {
            assert_eq!(code.as_str().parse::<ErrorCode>().unwrap(), code);
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
        assert!("NOPE".parse::<ErrorCode>().is_err());
    }
}
