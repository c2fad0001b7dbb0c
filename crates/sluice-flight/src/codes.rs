//! Fatal errors: gRPC statuses whose message starts with `[CODE]`.

use sluice_contract::ErrorCode;
use tonic::{Code, Status};

/// A fatal error of a stage or of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageError {
    /// Code from the shared vocabulary.
    pub code: ErrorCode,
    /// What went wrong.
    pub message: String,
}

impl StageError {
    /// A new error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The gRPC code a sluice code travels as (protocol.md §5).
    pub fn grpc_code(code: ErrorCode) -> Code {
        match code {
            ErrorCode::Timeout => Code::DeadlineExceeded,
            ErrorCode::Unavailable => Code::Unavailable,
            ErrorCode::Internal => Code::Internal,
            _ => Code::InvalidArgument,
        }
    }

    /// Reads a status back: the `[CODE]` prefix when present, else the gRPC code.
    pub fn from_status(status: &Status) -> Self {
        let msg = status.message();
        if let Some(rest) = msg.strip_prefix('[')
            && let Some((code, text)) = rest.split_once(']')
            && let Ok(code) = code.parse::<ErrorCode>()
        {
            return Self::new(code, text.trim_start());
        }
        let code = match status.code() {
            Code::DeadlineExceeded => ErrorCode::Timeout,
            Code::Unavailable | Code::Cancelled | Code::Aborted => ErrorCode::Unavailable,
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                ErrorCode::InvalidArgument
            }
            _ => ErrorCode::Internal,
        };
        Self::new(code, format!("{:?}: {msg}", status.code()))
    }
}

impl std::fmt::Display for StageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.code, self.message)
    }
}

impl std::error::Error for StageError {}

impl From<StageError> for Status {
    fn from(e: StageError) -> Self {
        Status::new(StageError::grpc_code(e.code), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_survive_a_status() {
        for code in ErrorCode::ALL {
            let s: Status = StageError::new(code, "field \"id\": bad").into();
            assert_eq!(s.code(), StageError::grpc_code(code));
            let back = StageError::from_status(&s);
            assert_eq!(back, StageError::new(code, "field \"id\": bad"));
        }
        let plain = StageError::from_status(&Status::unavailable("connection refused"));
        assert_eq!(plain.code, ErrorCode::Unavailable);
    }
}
