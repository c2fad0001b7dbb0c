package stage

import (
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
)

// outputBudget is the largest estimated body of one output message.
// protocol.md section 1: a stage MUST keep each output message under
// MaxMessageSize, splitting a large answer into several "batch" messages
// (same in_seq); half of the limit leaves room for the estimate's errors
// (a row larger than the average, IPC padding and header).
const outputBudget = MaxMessageSize / 2

// splitRecord cuts rec into row slices (zero-copy) whose estimated size is
// at most budget each, in row order. It returns new references: the caller
// releases them, and still owns rec. A record within the budget comes back
// whole; a single row larger than the budget is a piece of its own.
func splitRecord(rec arrow.RecordBatch, budget int64) []arrow.RecordBatch {
	rows := rec.NumRows()
	whole := recordSize(rec)
	rec.Retain()
	if whole.total() <= budget || rows <= 1 {
		return []arrow.RecordBatch{rec}
	}
	// Every piece carries the fixed bytes: the rows get what is left, but
	// at least an eighth of the budget (a view column whose data buffers
	// fill the budget makes large messages, not a message per row).
	sp := splitter{room: max(budget-whole.fixed, budget/8), opaquePerRow: float64(whole.opaque) / float64(rows)}
	return sp.appendPieces(nil, rec, sp.rowBytes(whole, rows))
}

type splitter struct {
	room         int64   // the most bytes of rows in one piece
	opaquePerRow float64 // the bytes of opaque layouts, spread over the rows
}

func (sp splitter) rowBytes(s size, rows int64) int64 {
	return s.sliced + int64(sp.opaquePerRow*float64(rows))
}

// appendPieces appends rec, whose rows are estimated at bytes, to pieces,
// cut if they are over the room. It takes over rec.
func (sp splitter) appendPieces(pieces []arrow.RecordBatch, rec arrow.RecordBatch, bytes int64) []arrow.RecordBatch {
	rows := rec.NumRows()
	if bytes <= sp.room || rows <= 1 {
		return append(pieces, rec)
	}
	defer rec.Release()
	// As many pieces as the average row size asks for; a piece whose rows
	// are larger than the average is cut again. Each has fewer rows than
	// rec (n ≥ 2), so this ends.
	n := min((bytes+sp.room-1)/sp.room, rows)
	for i := range n {
		piece := rec.NewSlice(rows*i/n, rows*(i+1)/n)
		pieces = sp.appendPieces(pieces, piece, sp.rowBytes(recordSize(piece), piece.NumRows()))
	}
	return pieces
}

// size is the estimated IPC body of a record or an array, as the IPC
// writer sends it, in three parts.
type size struct {
	// sliced: the bytes of the rows; for a slice, of its rows only.
	sliced int64
	// fixed: the bytes every slice carries whole (the data buffers of view
	// types, which the IPC writer sends whole).
	fixed int64
	// opaque: the bytes of layouts estimated whole, not by row (unions,
	// list views, run-end encoded): the splitter spreads them over the
	// rows of the record it starts from.
	opaque int64
}

func (s size) total() int64 { return s.sliced + s.fixed + s.opaque }

func (s *size) add(o size) {
	s.sliced, s.fixed, s.opaque = s.sliced+o.sliced, s.fixed+o.fixed, s.opaque+o.opaque
}

// recordSize estimates the IPC body of rec. Dictionaries travel in their
// own messages and are not counted.
func recordSize(rec arrow.RecordBatch) size {
	var s size
	for _, col := range rec.Columns() {
		s.add(arraySize(col))
	}
	return s
}

func arraySize(arr arrow.Array) size {
	n := int64(arr.Len())
	var s size
	if arr.NullN() > 0 {
		s.sliced += (n + 7) / 8 // validity bitmap
	}
	switch dt := arr.DataType().(type) {
	case *arrow.NullType:
		return size{}
	case arrow.ExtensionType:
		return arraySize(arr.(array.ExtensionArray).Storage())
	case *arrow.DictionaryType:
		return arraySize(arr.(*array.Dictionary).Indices())
	case *arrow.BooleanType:
		s.sliced += (n + 7) / 8
	case arrow.FixedWidthDataType:
		s.sliced += (n*int64(dt.BitWidth()) + 7) / 8
	case *arrow.BinaryType, *arrow.StringType:
		s.sliced += 4*(n+1) + int64(len(arr.(array.BinaryLike).ValueBytes()))
	case *arrow.LargeBinaryType, *arrow.LargeStringType:
		s.sliced += 8*(n+1) + int64(len(arr.(array.BinaryLike).ValueBytes()))
	case arrow.BinaryViewDataType:
		s.sliced += n * int64(arrow.ViewHeaderSizeBytes)
		for _, b := range arr.Data().Buffers()[2:] {
			if b != nil {
				s.fixed += int64(b.Len())
			}
		}
	case *arrow.StructType:
		st := arr.(*array.Struct)
		for i := range st.NumField() {
			s.add(arraySize(st.Field(i)))
		}
	case *arrow.ListType, *arrow.MapType, *arrow.LargeListType:
		l := arr.(array.ListLike)
		width := int64(4)
		if _, ok := dt.(*arrow.LargeListType); ok {
			width = 8
		}
		s.sliced += width * (n + 1)
		if n > 0 {
			from, _ := l.ValueOffsets(0)
			_, to := l.ValueOffsets(int(n) - 1)
			values := array.NewSlice(l.ListValues(), from, to)
			s.add(arraySize(values))
			values.Release()
		}
	case *arrow.FixedSizeListType:
		l := arr.(*array.FixedSizeList)
		k := int64(dt.Len())
		values := array.NewSlice(l.ListValues(), int64(l.Offset())*k, int64(l.Offset()+l.Len())*k)
		s.add(arraySize(values))
		values.Release()
	default:
		// Unions, list views, run-end encoded and anything newer: every
		// buffer, children whole.
		return size{opaque: dataSize(arr.Data())}
	}
	return s
}

func dataSize(d arrow.ArrayData) int64 {
	var n int64
	for _, b := range d.Buffers() {
		if b != nil {
			n += int64(b.Len())
		}
	}
	for _, c := range d.Children() {
		n += dataSize(c)
	}
	return n
}
