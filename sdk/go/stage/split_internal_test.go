package stage

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// zoo is a record of many layouts: fixed width, bitmaps, offsets, views,
// nesting, dictionaries. Row 1500 has a 20 KiB string, far above the
// average row.
func zoo(t *testing.T, mem memory.Allocator, rows int) arrow.RecordBatch {
	t.Helper()
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "i", Type: arrow.PrimitiveTypes.Int64},
		{Name: "b", Type: arrow.FixedWidthTypes.Boolean, Nullable: true},
		{Name: "s", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "ls", Type: arrow.BinaryTypes.LargeString},
		{Name: "sv", Type: arrow.BinaryTypes.StringView},
		{Name: "st", Type: arrow.StructOf(
			arrow.Field{Name: "a", Type: arrow.PrimitiveTypes.Int32},
			arrow.Field{Name: "t", Type: arrow.BinaryTypes.String})},
		{Name: "l", Type: arrow.ListOf(arrow.BinaryTypes.String)},
		{Name: "fsl", Type: arrow.FixedSizeListOf(3, arrow.PrimitiveTypes.Int16)},
		{Name: "d", Type: &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int8, ValueType: arrow.BinaryTypes.String}},
		{Name: "dec", Type: &arrow.Decimal128Type{Precision: 15, Scale: 2}},
	}, nil)
	var js strings.Builder
	js.WriteByte('[')
	for r := range rows {
		if r > 0 {
			js.WriteByte(',')
		}
		s := strings.Repeat("s", r%50)
		if r == 1500 {
			s = strings.Repeat("S", 20<<10)
		}
		b := "null"
		if r%3 != 0 {
			b = fmt.Sprint(r%2 == 0)
		}
		sv := strings.Repeat("v", r%14) // 13 bytes are not inline: a data buffer
		fmt.Fprintf(&js, `{"i":%d,"b":%s,"s":%q,"ls":"%d","sv":%q,"st":{"a":%d,"t":"t%d"},"l":["a","%s"],"fsl":[1,2,%d],"d":"%s","dec":"%d.25"}`,
			r, b, s, r, sv, r, r, strings.Repeat("l", r%7), r%100, []string{"AIR", "SHIP", "RAIL"}[r%3], r)
	}
	js.WriteByte(']')
	rec, _, err := array.RecordFromJSON(mem, schema, strings.NewReader(js.String()))
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// ipcBody is what the IPC writer really sends for rec: the body bytes.
func ipcBody(t *testing.T, mem memory.Allocator, rec arrow.RecordBatch) int64 {
	t.Helper()
	p, err := ipc.GetRecordBatchPayload(rec, ipc.WithAllocator(mem))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Release()
	var body bytes.Buffer
	if err := p.SerializeBody(&body); err != nil {
		t.Fatal(err)
	}
	return int64(body.Len())
}

func TestSplitRecordKeepsRowsInOrderAndEachPieceInTheBudget(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	defer mem.AssertSize(t, 0)
	rec := zoo(t, mem, 3000)
	defer rec.Release()

	const budget = 16 << 10
	whole := recordSize(rec).total()
	if real := ipcBody(t, mem, rec); whole < real*9/10 || whole > real*11/10 {
		t.Fatalf("estimate %d bytes, the IPC body is %d", whole, real)
	}
	pieces := splitRecord(rec, budget)
	defer func() {
		for _, p := range pieces {
			p.Release()
		}
	}()
	if len(pieces) < int(whole/budget) {
		t.Fatalf("%d bytes in %d pieces", whole, len(pieces))
	}
	var at int64
	for i, p := range pieces {
		want := rec.NewSlice(at, at+p.NumRows())
		if !array.RecordEqual(p, want) {
			t.Errorf("piece %d (rows %d..%d) differs from the input's rows", i, at, at+p.NumRows())
		}
		want.Release()
		real := ipcBody(t, mem, p)
		big := at <= 1500 && 1500 < at+p.NumRows()
		switch {
		case big && p.NumRows() != 1:
			t.Errorf("piece %d: the 20 KiB row shares a piece of %d rows (%d bytes)", i, p.NumRows(), real)
		case !big && real > budget*11/10: // the estimate leaves out IPC padding
			t.Errorf("piece %d: %d rows, %d bytes (estimated %+v), budget %d", i, p.NumRows(), real, recordSize(p), budget)
		}
		at += p.NumRows()
	}
	if at != rec.NumRows() {
		t.Fatalf("the pieces have %d rows, the record %d", at, rec.NumRows())
	}
	t.Logf("%d rows, %d bytes estimated, in %d pieces", rec.NumRows(), whole, len(pieces))
}

func TestSplitRecordWithinTheBudgetIsWhole(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	defer mem.AssertSize(t, 0)
	rec := zoo(t, mem, 100)
	defer rec.Release()
	pieces := splitRecord(rec, recordSize(rec).total())
	if len(pieces) != 1 || pieces[0] != rec {
		t.Fatalf("%d pieces", len(pieces))
	}
	pieces[0].Release()
}

// A type the estimate counts whole in every slice (a union) is split by the
// average row, not down to single rows.
func TestSplitRecordOfATypeCountedWhole(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	defer mem.AssertSize(t, 0)
	ut := arrow.DenseUnionOf([]arrow.Field{{Name: "n", Type: arrow.PrimitiveTypes.Int64}, {Name: "s", Type: arrow.BinaryTypes.String}}, []arrow.UnionTypeCode{0, 1})
	b := array.NewDenseUnionBuilder(mem, ut)
	defer b.Release()
	for r := range 10000 {
		b.Append(arrow.UnionTypeCode(r % 2))
		if r%2 == 0 {
			b.Child(0).(*array.Int64Builder).Append(int64(r))
		} else {
			b.Child(1).(*array.StringBuilder).Append(strings.Repeat("u", 20))
		}
	}
	col := b.NewArray()
	defer col.Release()
	rec := array.NewRecordBatch(arrow.NewSchema([]arrow.Field{{Name: "u", Type: ut}}, nil), []arrow.Array{col}, 10000)
	defer rec.Release()
	size := recordSize(rec).total()
	pieces := splitRecord(rec, size/4)
	var rows int64
	for _, p := range pieces {
		rows += p.NumRows()
		p.Release()
	}
	if len(pieces) != 4 || rows != 10000 {
		t.Fatalf("%d pieces, %d rows", len(pieces), rows)
	}
}

// The IPC writer sends the data buffers of a view column whole with every
// slice: they count in every piece, and do not make a piece per row.
func TestSplitRecordWithViewDataLargerThanTheBudget(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	defer mem.AssertSize(t, 0)
	b := array.NewStringViewBuilder(mem)
	defer b.Release()
	for r := range 3000 {
		b.Append(fmt.Sprintf("%0100d", r)) // not inline
	}
	col := b.NewArray()
	defer col.Release()
	rec := array.NewRecordBatch(arrow.NewSchema([]arrow.Field{{Name: "sv", Type: col.DataType()}}, nil), []arrow.Array{col}, 3000)
	defer rec.Release()
	const budget = 16 << 10
	if s := recordSize(rec); s.fixed < 300000 || s.sliced != 3000*16 {
		t.Fatalf("estimate %+v", s)
	}
	pieces := splitRecord(rec, budget)
	var at int64
	for _, p := range pieces {
		want := rec.NewSlice(at, at+p.NumRows())
		if !array.RecordEqual(p, want) {
			t.Errorf("rows %d..%d differ", at, at+p.NumRows())
		}
		want.Release()
		at += p.NumRows()
		p.Release()
	}
	// the rows' 48 000 bytes of views in pieces of an eighth of the budget
	if at != 3000 || len(pieces) != 24 {
		t.Fatalf("%d rows in %d pieces", at, len(pieces))
	}
}
