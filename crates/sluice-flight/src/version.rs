//! Protocol versions and their negotiation through `describe`.
//!
//! The engine's `describe` request names the versions it speaks
//! ([`DescribeRequest`]); the stage answers its manifest in the newest one
//! both speak ([`negotiate`]). An engine that sends an empty body (a
//! `sluice.stage.v1` engine) is answered in v1, so stages built with a newer
//! SDK keep working with older engines, and v1 stages (which ignore the body
//! and answer v1) keep working with newer ones.

use serde::{Deserialize, Serialize};

/// The first version: everything but what [`V1_1`] adds.
pub const V1: &str = "sluice.stage.v1";

/// Adds `plain_types` and `timing` to the manifest (docs/protocol.md, section 6).
pub const V1_1: &str = "sluice.stage.v1.1";

/// The versions this crate speaks, newest first.
pub const SPOKEN: [&str; 2] = [V1_1, V1];

/// The JSON body of the engine's `describe` request.
///
/// Unknown keys are ignored: a newer engine may add some.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeRequest {
    /// The versions the engine speaks.
    pub protocols: Vec<String>,
}

impl DescribeRequest {
    /// The request this crate's engine side sends.
    pub fn ours() -> Self {
        Self {
            protocols: SPOKEN.iter().map(|v| v.to_string()).collect(),
        }
    }

    /// Reads a `describe` body: empty is a v1 engine.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self {
                protocols: vec![V1.into()],
            });
        }
        let r: Self = serde_json::from_slice(body)
            .map_err(|e| format!(r#"the describe request is not {{"protocols":[...]}}: {e}"#))?;
        if r.protocols.is_empty() {
            return Err("the describe request names no protocol version".into());
        }
        Ok(r)
    }
}

/// The newest version in `spoken` (newest first) that the engine also speaks,
/// or a message naming both lists.
pub fn negotiate(engine: &[String], spoken: &[&'static str]) -> Result<&'static str, String> {
    spoken
        .iter()
        .find(|v| engine.iter().any(|e| e == *v))
        .copied()
        .ok_or_else(|| {
            format!(
                "the engine speaks {}; this stage speaks {}",
                engine.join(", "),
                spoken.join(", ")
            )
        })
}

/// Whether this crate speaks `version`.
pub fn is_spoken(version: &str) -> bool {
    SPOKEN.contains(&version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_common_version_wins() {
        let ours = DescribeRequest::ours().protocols;
        assert_eq!(negotiate(&ours, &SPOKEN), Ok(V1_1));
        let v1_engine = DescribeRequest::parse(b"").unwrap().protocols;
        assert_eq!(negotiate(&v1_engine, &SPOKEN), Ok(V1));
        // a newer engine lists versions it speaks that we do not
        let newer = vec!["sluice.stage.v2".to_string(), V1_1.to_string()];
        assert_eq!(negotiate(&newer, &SPOKEN), Ok(V1_1));
        let err = negotiate(&["sluice.stage.v2".into()], &SPOKEN).unwrap_err();
        assert_eq!(
            err,
            "the engine speaks sluice.stage.v2; this stage speaks sluice.stage.v1.1, sluice.stage.v1"
        );
    }

    proptest::proptest! {
        /// A describe body is what the engine (or anything dialing the
        /// stage) sends: any bytes give a request or a reason, never a panic,
        /// and what negotiates is always a version both sides speak.
        #[test]
        fn any_describe_body_negotiates_or_is_refused(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            if let Ok(r) = DescribeRequest::parse(&body) {
                proptest::prop_assert!(!r.protocols.is_empty());
                if let Ok(v) = negotiate(&r.protocols, &SPOKEN) {
                    proptest::prop_assert!(r.protocols.iter().any(|p| p == v));
                }
            }
        }

        /// Any JSON shape with a `protocols` key is read or refused.
        #[test]
        fn any_protocol_list_negotiates_to_a_common_version(list in proptest::collection::vec("sluice\\.stage\\.v[0-9.]{0,4}|[a-z]{0,6}", 0..6)) {
            let body = serde_json::to_vec(&serde_json::json!({"protocols": list})).unwrap();
            match DescribeRequest::parse(&body) {
                Ok(r) => match negotiate(&r.protocols, &SPOKEN) {
                    Ok(v) => proptest::prop_assert!(list.iter().any(|p| p == v) && is_spoken(v)),
                    Err(m) => proptest::prop_assert!(!list.iter().any(|p| is_spoken(p)) && m.contains("this stage speaks")),
                },
                Err(_) => proptest::prop_assert!(list.is_empty()),
            }
        }
    }

    #[test]
    fn bad_describe_bodies_are_refused_with_a_reason() {
        for body in [
            &b"{}"[..],
            b"[]",
            b"{\"protocols\":[]}",
            b"\xff",
            b"{\"protocols\":1}",
        ] {
            assert!(DescribeRequest::parse(body).is_err(), "{body:?}");
        }
        let newer = br#"{"protocols":["sluice.stage.v1"],"shm":true}"#;
        assert_eq!(
            DescribeRequest::parse(newer).unwrap().protocols,
            vec![V1.to_string()]
        );
        assert_eq!(
            DescribeRequest::parse(b" \n").unwrap().protocols,
            vec![V1.to_string()]
        );
    }
}
