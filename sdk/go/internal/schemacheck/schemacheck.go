// Package schemacheck compares the schema a stage declares with the schema
// of the data it sees, and says which field differs.
//
// The rule ("compatible") is the one of protocol.md section 2 made precise:
// same fields in the same order, same names, equal Arrow types (metadata
// ignored), and no nullable field where the declaration says not null. A
// non-nullable field where nullable is declared is fine: the data is
// stricter than promised.
package schemacheck

import (
	"fmt"

	"github.com/apache/arrow-go/v18/arrow"
)

// Compatible returns nil when got may be used where want is declared, else
// an error naming the first offending field, always of the form
// `field <name or position>: ...`, e.g. `field "l_quantity": expected int64, got utf8`.
func Compatible(want, got *arrow.Schema) error {
	return compatible(want, got, func(w, g arrow.DataType) bool { return arrow.TypeEqual(w, g) })
}

// Exact is Compatible with the types compared as the engine compares them
// (Rust's DataType equality): a nested field (of a struct, list, map,
// union, run-end encoding, a dictionary's values, an extension's storage)
// must have the same name, nullability and metadata too, at every depth.
// arrow.TypeEqual ignores the name of a list's element, and nested
// metadata unless asked (arrow.CheckMetadata); Compatible keeps it so. The
// top-level fields are as in Compatible: names compared, metadata ignored,
// a nullable field where want says not null refused. (arrow-go names a
// map's fields entries, key and value whatever a schema says, so those
// names cannot differ here: the engine's own check covers them.)
func Exact(want, got *arrow.Schema) error {
	return compatible(want, got, exactType)
}

func compatible(want, got *arrow.Schema, typeEqual func(w, g arrow.DataType) bool) error {
	wf, gf := want.Fields(), got.Fields()
	for i, w := range wf {
		if i >= len(gf) {
			return fmt.Errorf("field %q: missing (expected %s at position %d)", w.Name, w.Type, i)
		}
		g := gf[i]
		switch {
		case g.Name != w.Name:
			return fmt.Errorf("field %d: expected %q, got %q", i, w.Name, g.Name)
		case !typeEqual(w.Type, g.Type):
			return fmt.Errorf("field %q: expected %s, got %s", w.Name, w.Type, g.Type)
		case g.Nullable && !w.Nullable:
			return fmt.Errorf("field %q: expected not null, got nullable", w.Name)
		}
	}
	if len(gf) > len(wf) {
		g := gf[len(wf)]
		return fmt.Errorf("field %q: not declared (%s at position %d)", g.Name, g.Type, len(wf))
	}
	return nil
}

// exactType: a and b are equal types, and so are their nested fields, name,
// nullability and metadata included, at every depth.
func exactType(a, b arrow.DataType) bool {
	if !arrow.TypeEqual(a, b, arrow.CheckMetadata()) {
		return false
	}
	switch a := a.(type) {
	case *arrow.DictionaryType: // TypeEqual: the same ID, so b is one too
		b := b.(*arrow.DictionaryType)
		return exactType(a.IndexType, b.IndexType) && exactType(a.ValueType, b.ValueType)
	case arrow.ExtensionType:
		b, ok := b.(arrow.ExtensionType)
		return ok && exactType(a.StorageType(), b.StorageType())
	}
	an, ok := a.(arrow.NestedType)
	if !ok {
		return true
	}
	bn, ok := b.(arrow.NestedType)
	if !ok {
		return false
	}
	af, bf := an.Fields(), bn.Fields()
	if len(af) != len(bf) {
		return false
	}
	for i := range af {
		if af[i].Name != bf[i].Name || af[i].Nullable != bf[i].Nullable ||
			!af[i].Metadata.Equal(bf[i].Metadata) || !exactType(af[i].Type, bf[i].Type) {
			return false
		}
	}
	return true
}

// NoNullsWhereNotNull checks the data: a column of a not-null field of
// schema must have no null. Compatible only looks at the declaration.
func NoNullsWhereNotNull(schema *arrow.Schema, rec arrow.RecordBatch) error {
	for i, f := range schema.Fields() {
		if f.Nullable || i >= int(rec.NumCols()) {
			continue
		}
		if n := rec.Column(i).NullN(); n > 0 {
			return fmt.Errorf("field %q: declared not null, has %d null(s)", f.Name, n)
		}
	}
	return nil
}
