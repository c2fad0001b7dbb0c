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
    /// The stage's pipeline setting the error is about, when the engine
    /// knows it: a pipeline's message points at that setting's line.
    pub setting: Option<Setting>,
}

/// A setting of an external stage in the pipeline file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// `url`: where a remote stage listens.
    Url,
    /// `tls`: the CA, certificate and key of a `grpcs://` connection.
    Tls,
    /// `token`: the bearer token sent to a remote stage.
    Token,
}

impl Setting {
    /// The setting's key in a stage's table.
    pub fn key(self) -> &'static str {
        match self {
            Setting::Url => "url",
            Setting::Tls => "tls",
            Setting::Token => "token",
        }
    }
}

impl StageError {
    /// A new error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            setting: None,
        }
    }

    /// The error, about the pipeline's `setting`.
    pub fn about(mut self, setting: Setting) -> Self {
        self.setting = Some(setting);
        self
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

    /// The table of docs/protocol.md section 5, as both SDKs must map it.
    #[test]
    fn the_code_table_is_the_golden_one() {
        #[derive(serde::Deserialize)]
        struct Row {
            code: String,
            grpc: String,
            grpc_number: i32,
            retried: bool,
        }
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/protocol/error_codes.json"
        );
        let rows: Vec<Row> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let codes: Vec<&str> = rows.iter().map(|r| r.code.as_str()).collect();
        let ours: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(codes, ours, "the codes, in documentation order");
        for (row, code) in rows.iter().zip(ErrorCode::ALL) {
            let grpc = StageError::grpc_code(code);
            assert_eq!(grpc as i32, row.grpc_number, "{}", row.code);
            let name = format!("{grpc:?}");
            // tonic spells `DeadlineExceeded`, the table `DEADLINE_EXCEEDED`
            assert_eq!(
                name.to_uppercase(),
                row.grpc.replace('_', ""),
                "{}",
                row.code
            );
            assert_eq!(code.is_retryable(), row.retried, "{}", row.code);
        }
    }
}
