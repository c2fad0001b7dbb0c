// Package lines is the input contract of the example stages: the rows the
// "lines" stage of examples/mixed_stages/pipeline.toml makes from TPC-H
// lineitem (examples/stages/README.md).
package lines

import (
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/sluice-etl/sluice/sdk/go/stage"
)

// Column indexes in Schema.
const (
	OrderKey = iota
	LineNumber
	ShipMode
	Quantity
	ExtendedPrice
)

// Fields of the schema, in order; no column is nullable.
var Fields = []arrow.Field{
	{Name: "l_orderkey", Type: arrow.PrimitiveTypes.Int64},
	{Name: "l_linenumber", Type: arrow.PrimitiveTypes.Int32},
	{Name: "l_shipmode", Type: arrow.BinaryTypes.String},
	{Name: "l_quantity", Type: arrow.PrimitiveTypes.Int64},
	{Name: "l_extendedprice", Type: arrow.PrimitiveTypes.Float64},
}

// Schema is the Arrow schema of the contract.
var Schema = arrow.NewSchema(Fields, nil)

// Ref is the contract as a manifest names it: "lines" version 1.
var Ref = &stage.SchemaRef{Name: "lines", Version: "1", Schema: Schema}

// Row is one row of the contract, for building test batches.
type Row struct {
	OrderKey      int64
	LineNumber    int32
	ShipMode      string
	Quantity      int64
	ExtendedPrice float64
}

// Build returns a record of Schema holding rows.
func Build(mem memory.Allocator, rows ...Row) arrow.RecordBatch {
	b := array.NewRecordBuilder(mem, Schema)
	defer b.Release()
	for _, r := range rows {
		b.Field(OrderKey).(*array.Int64Builder).Append(r.OrderKey)
		b.Field(LineNumber).(*array.Int32Builder).Append(r.LineNumber)
		b.Field(ShipMode).(*array.StringBuilder).Append(r.ShipMode)
		b.Field(Quantity).(*array.Int64Builder).Append(r.Quantity)
		b.Field(ExtendedPrice).(*array.Float64Builder).Append(r.ExtendedPrice)
	}
	return b.NewRecordBatch()
}
