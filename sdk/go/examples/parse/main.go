// Command parse is the "parse" example stage (examples/stages/README.md): a
// CPU-bound stage that parses access log lines with a regular expression.
//
//	10.3.7.1 - - [1996-03-13 00:00:00] "GET /orders/1/lines/1 HTTP/1.1" 200 17954
//
// becomes id, ip, time, method, path, status and bytes ("-" is NULL). A line
// that does not match, or whose bytes do not fit an int64, is dropped and
// reported as a MALFORMED row error. Its Rust twin is
// crates/sluice-flight/examples/parse.rs; docs/stages.md ("Go or Rust?")
// measures the two.
package main

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"

	"github.com/sluice-etl/sluice/sdk/go/stage"
)

// accessLine is the format, in the syntax Go's regexp and Rust's regex crate
// share (both RE2): ip, two ignored fields, [time], "method path protocol",
// status, bytes.
var accessLine = regexp.MustCompile(`^(\S+) \S+ \S+ \[([^\]]+)\] "([A-Z]+) (\S+) HTTP/[0-9.]+" ([0-9]{3}) ([0-9]+|-)$`)

// Column indexes of the input.
const (
	inID = iota
	inLine
)

var inputSchema = arrow.NewSchema([]arrow.Field{
	{Name: "id", Type: arrow.PrimitiveTypes.Int64},
	{Name: "line", Type: arrow.BinaryTypes.String},
}, nil)

var outputSchema = arrow.NewSchema([]arrow.Field{
	{Name: "id", Type: arrow.PrimitiveTypes.Int64},
	{Name: "ip", Type: arrow.BinaryTypes.String},
	{Name: "time", Type: arrow.BinaryTypes.String},
	{Name: "method", Type: arrow.BinaryTypes.String},
	{Name: "path", Type: arrow.BinaryTypes.String},
	{Name: "status", Type: arrow.PrimitiveTypes.Int32},
	{Name: "bytes", Type: arrow.PrimitiveTypes.Int64, Nullable: true},
}, nil)

type parse struct{ stage.Base }

func (parse) Manifest() stage.Manifest {
	return stage.Manifest{
		Name:         "parse",
		Version:      "1.0.0",
		InputSchema:  &stage.SchemaRef{Name: "log_lines", Version: "1", Schema: inputSchema},
		OutputSchema: &stage.SchemaRef{Name: "access_log", Version: "1", Schema: outputSchema},
		Stateful:     false,
		Ordering:     stage.OrderingPreserve,
		Errors:       stage.ErrorsRow,
	}
}

func (parse) Open(_ context.Context, req stage.OpenRequest) (stage.Processor, error) {
	// No config: decoding into an empty struct rejects any key.
	if err := req.DecodeConfig(&struct{}{}); err != nil {
		return nil, err
	}
	mem := req.Allocator
	return stage.ProcessorFunc(func(_ context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
		b := array.NewRecordBuilder(mem, outputSchema)
		defer b.Release()
		ids := rec.Column(inID).(*array.Int64)
		lines := rec.Column(inLine).(*array.String)
		var errs []stage.RowError
		for i := range lines.Len() {
			if err := parseLine(b, ids.Value(i), lines.Value(i)); err != "" {
				errs = append(errs, stage.NewRowError(int64(i), stage.Malformed, "%s", err))
			}
		}
		if b.Field(0).Len() == 0 {
			return nil, errs, nil // no row kept: the SDK answers with an ack
		}
		return b.NewRecordBatch(), errs, nil
	}), nil
}

// parseLine appends the parsed line to b, or returns why it cannot.
func parseLine(b *array.RecordBuilder, id int64, line string) string {
	m := accessLine.FindStringSubmatchIndex(line)
	if m == nil {
		return "not an access log line"
	}
	group := func(g int) string { return line[m[2*g]:m[2*g+1]] }
	var bytes int64
	sent := group(6)
	if sent != "-" {
		n, err := strconv.ParseInt(sent, 10, 64)
		if err != nil {
			return fmt.Sprintf("bytes %s do not fit an int64", sent)
		}
		bytes = n
	}
	status, _ := strconv.ParseInt(group(5), 10, 32) // three digits: always fits
	b.Field(0).(*array.Int64Builder).Append(id)
	for f := 1; f <= 4; f++ {
		b.Field(f).(*array.StringBuilder).Append(group(f))
	}
	b.Field(5).(*array.Int32Builder).Append(int32(status))
	if sent == "-" {
		b.Field(6).(*array.Int64Builder).AppendNull()
	} else {
		b.Field(6).(*array.Int64Builder).Append(bytes)
	}
	return ""
}

func main() {
	if err := stage.Serve(context.Background(), parse{}); err != nil {
		fmt.Fprintln(os.Stderr, "parse:", err)
		os.Exit(1)
	}
}
