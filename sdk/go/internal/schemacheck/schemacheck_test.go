package schemacheck

import (
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

func schema(fields ...arrow.Field) *arrow.Schema { return arrow.NewSchema(fields, nil) }

func TestCompatible(t *testing.T) {
	id := arrow.Field{Name: "id", Type: arrow.PrimitiveTypes.Int64}
	idNull := arrow.Field{Name: "id", Type: arrow.PrimitiveTypes.Int64, Nullable: true}
	name := arrow.Field{Name: "name", Type: arrow.BinaryTypes.String, Nullable: true}
	withMeta := arrow.Field{Name: "id", Type: arrow.PrimitiveTypes.Int64, Metadata: arrow.NewMetadata([]string{"k"}, []string{"v"})}

	for _, tc := range []struct {
		name      string
		want, got *arrow.Schema
		err       string
	}{
		{"equal", schema(id, name), schema(id, name), ""},
		{"metadata ignored", schema(id), schema(withMeta), ""},
		{"stricter nullability", schema(idNull), schema(id), ""},
		{"looser nullability", schema(id), schema(idNull), `field "id": expected not null, got nullable`},
		{"type", schema(id), schema(arrow.Field{Name: "id", Type: arrow.BinaryTypes.String}), `field "id": expected int64, got utf8`},
		{"name", schema(id), schema(arrow.Field{Name: "key", Type: arrow.PrimitiveTypes.Int64}), `field 0: expected "id", got "key"`},
		{"missing", schema(id, name), schema(id), `field "name": missing (expected utf8 at position 1)`},
		{"extra", schema(id), schema(id, name), `field "name": not declared (utf8 at position 1)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Compatible(tc.want, tc.got)
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tc.err != "" && (err == nil || err.Error() != tc.err):
				t.Fatalf("error = %v, want %q", err, tc.err)
			}
		})
	}
}

func TestNoNullsWhereNotNull(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	defer mem.AssertSize(t, 0)

	b := array.NewInt64Builder(mem)
	defer b.Release()
	b.AppendValues([]int64{1, 0, 3}, []bool{true, false, true})
	col := b.NewArray()
	defer col.Release()

	s := schema(arrow.Field{Name: "id", Type: arrow.PrimitiveTypes.Int64})
	rec := array.NewRecordBatch(s, []arrow.Array{col}, 3)
	defer rec.Release()
	if err := NoNullsWhereNotNull(s, rec); err == nil || err.Error() != `field "id": declared not null, has 1 null(s)` {
		t.Fatalf("err = %v", err)
	}
	nullable := schema(arrow.Field{Name: "id", Type: arrow.PrimitiveTypes.Int64, Nullable: true})
	if err := NoNullsWhereNotNull(nullable, rec); err != nil {
		t.Fatal(err)
	}
}
