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
	wf, gf := want.Fields(), got.Fields()
	for i, w := range wf {
		if i >= len(gf) {
			return fmt.Errorf("field %q: missing (expected %s at position %d)", w.Name, w.Type, i)
		}
		g := gf[i]
		switch {
		case g.Name != w.Name:
			return fmt.Errorf("field %d: expected %q, got %q", i, w.Name, g.Name)
		case !arrow.TypeEqual(w.Type, g.Type):
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
