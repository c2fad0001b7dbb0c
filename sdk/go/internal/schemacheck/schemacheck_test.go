package schemacheck

import (
	"strings"
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

// Exact compares nested fields as the engine's DataType equality does:
// names (a list's element, a map's entries and key/value), nullability and
// metadata, at every depth, where Compatible (arrow.TypeEqual) lets some
// pass. Top-level fields are compared as by Compatible.
func TestExact(t *testing.T) {
	meta := arrow.NewMetadata([]string{"k"}, []string{"v"})
	item := arrow.ListOfField(arrow.Field{Name: "item", Type: arrow.PrimitiveTypes.Int64, Nullable: true})
	element := arrow.ListOfField(arrow.Field{Name: "element", Type: arrow.PrimitiveTypes.Int64, Nullable: true})
	itemMeta := arrow.ListOfField(arrow.Field{Name: "item", Type: arrow.PrimitiveTypes.Int64, Nullable: true, Metadata: meta})
	str := func(fields ...arrow.Field) arrow.DataType { return arrow.StructOf(fields...) }
	x := arrow.Field{Name: "x", Type: arrow.PrimitiveTypes.Int64, Nullable: true}
	xMeta := arrow.Field{Name: "x", Type: arrow.PrimitiveTypes.Int64, Nullable: true, Metadata: meta}
	m := arrow.MapOf(arrow.BinaryTypes.String, arrow.PrimitiveTypes.Int64)
	mOther := arrow.MapOf(arrow.BinaryTypes.String, arrow.PrimitiveTypes.Int64)
	mOther.SetItemNullable(false)
	dict := func(v arrow.DataType) arrow.DataType {
		return &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int32, ValueType: v}
	}
	f := func(typ arrow.DataType) arrow.Field { return arrow.Field{Name: "f", Type: typ, Nullable: true} }

	for _, tc := range []struct {
		name       string
		want, got  *arrow.Schema
		compatible bool // what Compatible says, for contrast
		exact      bool
	}{
		{"equal nested", schema(f(str(x, f(item)))), schema(f(str(x, f(item)))), true, true},
		{"top-level metadata", schema(f(item)), schema(arrow.Field{Name: "f", Type: item, Nullable: true, Metadata: meta}), true, true},
		{"top-level stricter nullability", schema(f(item)), schema(arrow.Field{Name: "f", Type: item}), true, true},
		{"top-level looser nullability", schema(arrow.Field{Name: "f", Type: item}), schema(f(item)), false, false},
		{"list element name", schema(f(item)), schema(f(element)), true, false},
		{"list element metadata", schema(f(item)), schema(f(itemMeta)), true, false},
		{"large list element name", schema(f(arrow.LargeListOfField(item.ElemField()))), schema(f(arrow.LargeListOfField(element.ElemField()))), false, false},
		{"struct field metadata", schema(f(str(x))), schema(f(str(xMeta))), true, false},
		{"list in a struct", schema(f(str(f(item)))), schema(f(str(f(element)))), true, false},
		{"map item nullability", schema(f(m)), schema(f(mOther)), false, false},
		// (arrow-go names a map's fields entries, key and value whatever it
		// is given, in an IPC schema too: those names cannot differ here)
		{"map equal", schema(f(m)), schema(f(arrow.MapOf(arrow.BinaryTypes.String, arrow.PrimitiveTypes.Int64))), true, true},
		{"dictionary values", schema(f(dict(item))), schema(f(dict(element))), false, false},
		{"dictionary values equal", schema(f(dict(str(x)))), schema(f(dict(str(x)))), true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := Compatible(tc.want, tc.got); (err == nil) != tc.compatible {
				t.Errorf("Compatible: %v", err)
			}
			err := Exact(tc.want, tc.got)
			if (err == nil) != tc.exact {
				t.Fatalf("Exact: %v, want exact %v", err, tc.exact)
			}
			if err != nil && !strings.HasPrefix(err.Error(), `field "f": `) {
				t.Fatalf("Exact: %v does not name the field", err)
			}
		})
	}
}
