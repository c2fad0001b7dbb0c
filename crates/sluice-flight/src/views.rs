//! Checking the string views of a stage's answer, faster than arrow's IPC
//! reader does, with the same result.
//!
//! The engine must check what a stage sends: a string view that is not
//! UTF-8 would be undefined behaviour in every kernel that reads it. Arrow's
//! reader checks each view with its own `from_utf8` call, which for short
//! strings costs more than moving the batch (measured: ~0.35 CPU-seconds of
//! the identity stage's pipeline at 8k rows, as much as all its copies). So
//! the engine decodes a stage's top-level `Utf8View` columns as `BinaryView`
//! (arrow still checks every view's bounds, buffer index, prefix and
//! padding), then checks their UTF-8 here: inline views (up to 12 bytes) by
//! one mask when they are ASCII, long views by checking each data buffer
//! once and then only that the view starts and ends on character
//! boundaries; anything else by `from_utf8`, as arrow would.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{ArrayRef, BinaryViewArray, RecordBatch};
use arrow_data::ByteView;
use arrow_flight::FlightData;
use arrow_ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteOptions};
use arrow_schema::{DataType, Field, FieldRef, Schema, SchemaRef};

/// The high bit of the 12 inline bytes of a view (bytes 4..16).
const INLINE_HIGH_BITS: u128 = 0x8080_8080_8080_8080_8080_8080_0000_0000;

/// Whether every view of `array` is UTF-8. The views' bounds, buffer
/// indexes, prefixes and padding must already be checked (arrow does when
/// it decodes a `BinaryView`).
pub fn views_are_utf8(array: &BinaryViewArray) -> Result<(), String> {
    let buffers = array.data_buffers();
    let whole: Vec<bool> = buffers
        .iter()
        .map(|b| std::str::from_utf8(b.as_slice()).is_ok())
        .collect();
    for (row, &v) in array.views().iter().enumerate() {
        let len = v as u32 as usize;
        let inline;
        let bytes = if len <= 12 {
            if v & INLINE_HIGH_BITS == 0 {
                continue;
            }
            inline = v.to_le_bytes();
            &inline[4..4 + len]
        } else {
            let view = ByteView::from(v);
            let index = view.buffer_index as usize;
            let data = buffers
                .get(index)
                .map(|b| b.as_slice())
                .ok_or_else(|| format!("row {row}: no data buffer {index}"))?;
            let start = view.offset as usize;
            let bytes = start
                .checked_add(len)
                .and_then(|end| data.get(start..end))
                .ok_or_else(|| format!("row {row}: bytes {start}..+{len} past its buffer"))?;
            // in valid UTF-8, a position is a character boundary unless its
            // byte continues a character (0b10xxxxxx)
            let boundary = |p: usize| data.get(p).is_none_or(|b| b & 0xC0 != 0x80);
            if whole[index] && boundary(start) && boundary(start + len) {
                continue;
            }
            bytes
        };
        std::str::from_utf8(bytes).map_err(|e| format!("row {row} is not UTF-8: {e}"))?;
    }
    Ok(())
}

/// How the engine decodes one stage's answers: its top-level `Utf8View`
/// columns as `BinaryView`, relabelled after [`views_are_utf8`].
#[derive(Debug)]
pub struct ViewsAsBinary {
    schema: SchemaRef,
    columns: Vec<usize>,
}

impl ViewsAsBinary {
    /// For the stage's schema message: the message to decode with instead,
    /// and how to restore its batches. `None` when it has no top-level
    /// `Utf8View` column, or has dictionaries (their ids would have to be
    /// kept as the stage wrote them; arrow checks those schemas itself).
    pub fn for_schema_message(data: &FlightData) -> Option<(FlightData, Self)> {
        let message = arrow_ipc::root_as_message(&data.data_header).ok()?;
        let schema = arrow_ipc::convert::fb_to_schema(message.header_as_schema()?);
        if schema
            .flattened_fields()
            .iter()
            .any(|f| matches!(f.data_type(), DataType::Dictionary(..)))
        {
            return None;
        }
        let columns: Vec<usize> = schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| f.data_type() == &DataType::Utf8View)
            .map(|(i, _)| i)
            .collect();
        if columns.is_empty() {
            return None;
        }
        let fields: Vec<FieldRef> = schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Utf8View => {
                    Arc::new(Field::clone(f).with_data_type(DataType::BinaryView))
                }
                _ => Arc::clone(f),
            })
            .collect();
        let binary = Schema::new_with_metadata(fields, schema.metadata().clone());
        let encoded = IpcDataGenerator::default().schema_to_bytes_with_dictionary_tracker(
            &binary,
            &mut DictionaryTracker::new(false),
            &IpcWriteOptions::default(),
        );
        let mut out = FlightData::from(encoded);
        out.app_metadata = data.app_metadata.clone();
        out.flight_descriptor = data.flight_descriptor.clone();
        Some((
            out,
            Self {
                schema: Arc::new(schema),
                columns,
            },
        ))
    }

    /// A decoded batch back in the stage's schema, its views' UTF-8 checked.
    /// A column that arrived as strings after all (a stage that sent its
    /// schema again) was checked by arrow and stays as it is.
    pub fn restore(&self, batch: RecordBatch) -> Result<RecordBatch, String> {
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        for &i in &self.columns {
            let Some(column) = columns.get(i) else {
                return Err(format!("the batch has no column {i}"));
            };
            let Some(binary) = column.as_binary_view_opt() else {
                continue;
            };
            let field = self.schema.field(i).name();
            views_are_utf8(binary).map_err(|e| format!("column `{field}`: {e}"))?;
            // SAFETY: every view is UTF-8 (checked just now); bounds,
            // prefixes and padding were checked when it was decoded
            let strings = unsafe { binary.clone().to_string_view_unchecked() };
            columns[i] = Arc::new(strings);
        }
        RecordBatch::try_new(Arc::clone(&self.schema), columns).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;
    use proptest::prelude::*;

    fn strings() -> impl Strategy<Value = Vec<Vec<u8>>> {
        let piece = prop_oneof![
            // text, mostly ASCII, some multi-byte characters
            "[a-z é€😀]{0,30}".prop_map(String::into_bytes),
            // any bytes, invalid UTF-8 often
            proptest::collection::vec(any::<u8>(), 0..30),
        ];
        proptest::collection::vec(piece, 0..40)
    }

    proptest! {
        /// Whatever the bytes, the check agrees with arrow's own.
        #[test]
        fn views_are_utf8_exactly_when_arrow_says_so(values in strings()) {
            let array = BinaryViewArray::from_iter_values(values.iter());
            prop_assert_eq!(views_are_utf8(&array).is_ok(), array.clone().to_string_view().is_ok());
        }

        /// Views into a buffer that is UTF-8 as a whole but start or end
        /// inside a character are refused, as arrow refuses them.
        #[test]
        fn a_view_cutting_a_character_is_refused(start in 0usize..20, len in 13usize..30) {
            let text = "ééééééééééééééééééééééééé€€€€€€€€€€".as_bytes().to_vec();
            prop_assume!(start + len <= text.len());
            let buffer = arrow_buffer::Buffer::from_vec(text.clone());
            let view = ByteView::new(len as u32, &text[start..start + 4])
                .with_buffer_index(0)
                .with_offset(start as u32);
            let views = arrow_buffer::ScalarBuffer::from(vec![view.as_u128()]);
            let array = BinaryViewArray::try_new(views, vec![buffer], None).unwrap();
            prop_assert_eq!(views_are_utf8(&array).is_ok(), array.clone().to_string_view().is_ok());
        }
    }

    #[test]
    fn a_schema_with_views_is_decoded_as_binary_and_restored() {
        use arrow_array::StringViewArray;
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("s", DataType::Utf8View, true),
        ]);
        let mut enc = crate::codec::BatchEncoder::new();
        let message = enc.schema_message(&schema);
        let (rewritten, plan) = ViewsAsBinary::for_schema_message(&message).unwrap();
        let decoded =
            arrow_ipc::convert::try_schema_from_flatbuffer_bytes(&rewritten.data_header).unwrap();
        assert_eq!(decoded.field(1).data_type(), &DataType::BinaryView);
        let binary = RecordBatch::try_new(
            Arc::new(decoded),
            vec![
                Arc::new(arrow_array::Int64Array::from(vec![1, 2])),
                Arc::new(BinaryViewArray::from_iter([
                    Some(&b"a string longer than twelve"[..]),
                    None,
                ])),
            ],
        )
        .unwrap();
        let restored = plan.restore(binary).unwrap();
        assert_eq!(restored.schema().as_ref(), &schema);
        let s = restored
            .column(1)
            .as_any()
            .downcast_ref::<StringViewArray>()
            .unwrap();
        assert_eq!(s.value(0), "a string longer than twelve");
        assert!(s.is_null(1));

        let bad = RecordBatch::try_new(
            Arc::new(
                arrow_ipc::convert::try_schema_from_flatbuffer_bytes(&rewritten.data_header)
                    .unwrap(),
            ),
            vec![
                Arc::new(arrow_array::Int64Array::from(vec![1])),
                Arc::new(BinaryViewArray::from_iter_values([&[0xff, 0xfe][..]])),
            ],
        )
        .unwrap();
        assert!(plan.restore(bad).unwrap_err().contains("column `s`"));
        // dictionaries keep arrow's own check
        let dict = Schema::new(vec![Field::new(
            "d",
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8View)),
            false,
        )]);
        assert!(
            ViewsAsBinary::for_schema_message(
                &crate::codec::BatchEncoder::new().schema_message(&dict)
            )
            .is_none()
        );
    }
}
