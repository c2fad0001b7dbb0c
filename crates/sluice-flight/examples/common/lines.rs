//! The `lines` schema the example stages read (examples/stages/README.md).
#![allow(dead_code)] // each example uses part of it

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use sluice_flight::SchemaDecl;

/// `l_orderkey`, `l_linenumber`, `l_shipmode`, `l_quantity`, `l_extendedprice`.
pub fn lines_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("l_orderkey", DataType::Int64, false),
        Field::new("l_linenumber", DataType::Int32, false),
        Field::new("l_shipmode", DataType::Utf8, false),
        Field::new("l_quantity", DataType::Int64, false),
        Field::new("l_extendedprice", DataType::Float64, false),
    ]))
}

/// A schema declaration for the manifest.
pub fn decl(name: &str, schema: SchemaRef) -> SchemaDecl {
    SchemaDecl {
        name: name.into(),
        version: "1".into(),
        schema,
    }
}

/// Column indexes in [`lines_schema`].
pub const SHIPMODE: usize = 2;
/// Column index of `l_quantity`.
pub const QUANTITY: usize = 3;
