//! The envelope: one JSON object in the `app_metadata` of every message.
//!
//! Canonical encoding (protocol.md §4): keys in declaration order, absent
//! optional keys omitted, no whitespace, UTF-8 written as is. serde_json
//! produces exactly that from these types, so encode is `to_vec`.

use serde::{Deserialize, Serialize};
use sluice_contract::LineageEntry;

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A message with a record batch.
    Batch,
    /// Engine → stage: no more input in this exchange.
    End,
    /// Stage → engine: an input batch produced no output row.
    Ack,
    /// Stage → engine: rows of an input batch failed.
    RowErrors,
    /// Stage → engine: all output of the exchange was sent.
    Flushed,
    /// v1.1, shared memory: the receiver is done with a slot (`shm`).
    Release,
    /// v1.1, stage → engine, when the engine offered it: the output for
    /// input batch `in_seq` is that batch, as the engine sent it. The rows
    /// do not travel back: the engine reuses the batch it holds.
    Unchanged,
}

impl Kind {
    /// As the envelope spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Batch => "batch",
            Kind::End => "end",
            Kind::Ack => "ack",
            Kind::RowErrors => "row_errors",
            Kind::Flushed => "flushed",
            Kind::Release => "release",
            Kind::Unchanged => "unchanged",
        }
    }
}

/// One failed row of a `row_errors` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowErrorEntry {
    /// Row index in the input batch `in_seq`.
    pub row: u64,
    /// Error code from the shared vocabulary.
    pub code: String,
    /// What is wrong with the row.
    pub message: String,
}

/// The envelope of one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Envelope version, 1.
    pub v: u32,
    /// What the message is.
    pub kind: Kind,
    /// Epoch of the exchange.
    pub epoch: u64,
    /// Sender's message number in the exchange, from 0.
    pub seq: u64,
    /// The input batch a stage message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_seq: Option<u64>,
    /// W3C trace context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Lineage entry of the stage that produced the batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<LineageEntry>,
    /// Failed rows, for `row_errors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<RowErrorEntry>>,
    /// Total output rows, for `flushed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// A stateful v1.1 stage's state after the exchange, base64, on `flushed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// v1.1, shared memory: on a `batch`, the slot holding its IPC
    /// messages; on a `release`, the slot given back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm: Option<crate::shm::SlotRef>,
}

impl Envelope {
    /// An envelope with only the required keys.
    pub fn new(kind: Kind, epoch: u64, seq: u64) -> Self {
        Self {
            v: 1,
            kind,
            epoch,
            seq,
            in_seq: None,
            traceparent: None,
            lineage: None,
            errors: None,
            rows: None,
            snapshot: None,
            shm: None,
        }
    }

    /// Sets `in_seq`.
    pub fn answering(mut self, in_seq: u64) -> Self {
        self.in_seq = Some(in_seq);
        self
    }

    /// The canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        // serializing these plain types cannot fail
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes an envelope; the error says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let e: Envelope =
            serde_json::from_slice(bytes).map_err(|e| format!("bad envelope: {e}"))?;
        if e.v != 1 {
            return Err(format!("unsupported envelope version {}", e.v));
        }
        match (e.kind, e.shm) {
            (Kind::Release, None) => Err("a `release` envelope must name its slot (`shm`)".into()),
            (Kind::Batch | Kind::Release, _) | (_, None) => Ok(e),
            (kind, Some(_)) => Err(format!(
                "a `{}` envelope names a slot of shared memory (`shm`); only `batch` and `release` do",
                kind.as_str()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a `batch` or a `release` names a slot, and a `release` must.
    #[test]
    fn a_slot_is_named_where_the_protocol_says() {
        let slot = r#""shm":{"offset":64,"length":128}"#;
        for ok in [
            format!(r#"{{"v":1,"kind":"batch","epoch":1,"seq":0,{slot}}}"#),
            format!(r#"{{"v":1,"kind":"release","epoch":1,"seq":0,{slot}}}"#),
        ] {
            assert!(Envelope::decode(ok.as_bytes()).is_ok(), "{ok}");
        }
        let release = Envelope::decode(br#"{"v":1,"kind":"release","epoch":1,"seq":0}"#);
        assert!(release.unwrap_err().contains("must name its slot"));
        for kind in ["end", "ack", "flushed", "row_errors", "unchanged"] {
            let bad = format!(r#"{{"v":1,"kind":"{kind}","epoch":1,"seq":0,{slot}}}"#);
            let err = Envelope::decode(bad.as_bytes()).unwrap_err();
            assert!(err.contains("only `batch` and `release`"), "{kind}: {err}");
        }
    }

    #[test]
    fn golden_envelopes_round_trip_byte_for_byte() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/protocol/envelopes.jsonl"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let mut n = 0;
        for line in text.split('\n').filter(|l| !l.is_empty()) {
            let env = Envelope::decode(line.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(String::from_utf8(env.encode()).unwrap(), line);
            n += 1;
        }
        assert!(n >= 11);
    }

    /// Other encoders escape differently (Go's `encoding/json` writes
    /// `\u2028` and `\u003c`, Python's default is ASCII with surrogate
    /// pairs): every spelling decodes to the same envelope, which encodes
    /// canonically.
    #[test]
    fn other_spellings_decode_to_the_canonical_envelope() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/protocol/envelopes_decode.jsonl"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let mut n = 0;
        for line in text.split('\n').filter(|l| !l.is_empty()) {
            let (input, canonical): (String, String) = serde_json::from_str(line).unwrap();
            let env = Envelope::decode(input.as_bytes()).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(String::from_utf8(env.encode()).unwrap(), canonical);
            n += 1;
        }
        assert!(n >= 5);
    }

    fn envelope() -> impl proptest::strategy::Strategy<Value = Envelope> {
        use proptest::prelude::*;
        let kind = prop::sample::select(vec![
            Kind::Batch,
            Kind::End,
            Kind::Ack,
            Kind::RowErrors,
            Kind::Flushed,
            Kind::Release,
            Kind::Unchanged,
        ]);
        // any text: control characters, U+2028, quotes, astral planes
        let text = || any::<String>();
        let lineage =
            (text(), text(), text(), text()).prop_map(|(stage, kind, version, language)| {
                LineageEntry {
                    stage,
                    kind,
                    version,
                    language,
                }
            });
        let errors = prop::collection::vec(
            (any::<u64>(), text(), text()).prop_map(|(row, code, message)| RowErrorEntry {
                row,
                code,
                message,
            }),
            0..3,
        );
        let slot = (any::<u64>(), any::<u64>())
            .prop_map(|(offset, length)| crate::shm::SlotRef { offset, length });
        (
            (kind, any::<u64>(), any::<u64>(), any::<Option<u64>>()),
            (
                prop::option::of(text()),
                prop::option::of(lineage),
                prop::option::of(errors),
                any::<Option<u64>>(),
                prop::option::of(text()),
            ),
            slot,
        )
            .prop_map(
                |(
                    (kind, epoch, seq, in_seq),
                    (traceparent, lineage, errors, rows, snapshot),
                    slot,
                )| {
                    let mut e = Envelope::new(kind, epoch, seq);
                    e.in_seq = in_seq;
                    e.traceparent = traceparent;
                    e.lineage = lineage;
                    e.errors = errors;
                    e.rows = rows;
                    e.snapshot = snapshot;
                    // where the protocol has a slot, and only there
                    e.shm = matches!(kind, Kind::Batch | Kind::Release).then_some(slot);
                    e
                },
            )
    }

    proptest::proptest! {
        /// Every envelope decodes from its canonical bytes to itself, and
        /// those bytes are what encoding it again gives.
        #[test]
        fn every_envelope_round_trips(e in envelope()) {
            let bytes = e.encode();
            let back = Envelope::decode(&bytes);
            proptest::prop_assert_eq!(back.as_ref(), Ok(&e));
            proptest::prop_assert_eq!(back.map(|b| b.encode()), Ok(bytes));
        }

        /// Whatever bytes arrive, and whatever a changed byte does to a good
        /// envelope, decoding gives an envelope or a reason, never a panic;
        /// what it gives encodes to bytes that decode to it again.
        #[test]
        fn any_bytes_decode_or_are_refused(
            e in envelope(),
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
            flip in proptest::prelude::any::<(proptest::sample::Index, u8)>(),
        ) {
            let mut changed = e.encode();
            let i = flip.0.index(changed.len());
            changed[i] = flip.1;
            for bytes in [garbage, changed] {
                if let Ok(d) = Envelope::decode(&bytes) {
                    proptest::prop_assert_eq!(Envelope::decode(&d.encode()), Ok(d));
                }
            }
        }
    }

    #[test]
    fn bad_envelopes_are_refused_with_a_reason() {
        assert!(
            Envelope::decode(b"{\"v\":2,\"kind\":\"end\",\"epoch\":0,\"seq\":0}")
                .unwrap_err()
                .contains("version")
        );
        assert!(Envelope::decode(b"{\"v\":1,\"kind\":\"nope\",\"epoch\":0,\"seq\":0}").is_err());
        assert!(Envelope::decode(b"not json").is_err());
    }
}
