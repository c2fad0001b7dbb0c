package stage

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/flight"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// Protocol is the protocol this SDK speaks, the "protocol" of manifests and
// open requests.
const Protocol = "sluice.stage.v1"

// Language is the "language" of the manifest of a Go stage.
const Language = "go"

// MaxMessageSize is the largest gRPC message a stage sends or receives
// (protocol.md section 1). A batch is one message.
const MaxMessageSize = 64 << 20

// Defaults the SDK fills into a Manifest that leaves them zero.
const (
	DefaultMaxBatchRows = 65536
	// DefaultMaxBatchBytes is half of MaxMessageSize so that an output batch
	// somewhat larger than its input (enrich adds columns) still fits.
	DefaultMaxBatchBytes = 32 << 20
)

// Ordering is the "ordering" promise of a manifest.
type Ordering string

const (
	OrderingPreserve Ordering = "preserve" // output rows keep input order
	OrderingNone     Ordering = "none"     // no promise
)

// ErrorPolicy is the "errors" field of a manifest.
type ErrorPolicy string

const (
	ErrorsRow       ErrorPolicy = "row"        // the stage may report row errors
	ErrorsFatalOnly ErrorPolicy = "fatal_only" // it never does; the SDK enforces it
)

// Manifest describes a stage: the "describe" action returns it as JSON
// (protocol.md section 2), and the SDK checks every exchange against it.
type Manifest struct {
	Name     string `json:"name"`     // required
	Version  string `json:"version"`  // required, the implementation's version
	Language string `json:"language"` // "go" when empty
	Protocol string `json:"protocol"` // Protocol when empty; nothing else is accepted

	// InputSchema nil: the stage accepts any schema. OutputSchema nil: the
	// output schema is the input schema; allowed only when InputSchema is nil.
	InputSchema  *SchemaRef `json:"input_schema"`
	OutputSchema *SchemaRef `json:"output_schema"`

	// The engine slices input so that no batch is larger. Zero means the
	// defaults; MaxBatchBytes may not exceed MaxMessageSize.
	MaxBatchRows  int64 `json:"max_batch_rows"`
	MaxBatchBytes int64 `json:"max_batch_bytes"`

	Stateful bool        `json:"stateful"` // output depends on earlier batches: Flush matters
	Ordering Ordering    `json:"ordering"` // OrderingPreserve when empty
	Errors   ErrorPolicy `json:"errors"`   // ErrorsRow when empty
}

// SchemaRef is a named, versioned schema contract. In JSON the schema is
// "ipc": flight.SerializeSchema bytes (an IPC schema message), base64
// standard alphabet, padded; exact for every Arrow type.
type SchemaRef struct {
	Name    string
	Version string
	Schema  *arrow.Schema
}

type schemaRefJSON struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	IPC     string `json:"ipc"`
}

// MarshalJSON writes {"name","version","ipc"}.
func (r SchemaRef) MarshalJSON() ([]byte, error) {
	if r.Schema == nil {
		return nil, fmt.Errorf("stage: schema %q has no Arrow schema", r.Name)
	}
	ipc := flight.SerializeSchema(r.Schema, memory.DefaultAllocator)
	return marshalNoHTMLEscape(schemaRefJSON{r.Name, r.Version, base64.StdEncoding.EncodeToString(ipc)})
}

// UnmarshalJSON reads {"name","version","ipc"}.
func (r *SchemaRef) UnmarshalJSON(b []byte) error {
	var j schemaRefJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	raw, err := base64.StdEncoding.DecodeString(j.IPC)
	if err != nil {
		return fmt.Errorf("stage: schema %q: ipc: %w", j.Name, err)
	}
	s, err := flight.DeserializeSchema(raw, memory.DefaultAllocator)
	if err != nil {
		return fmt.Errorf("stage: schema %q: ipc: %w", j.Name, err)
	}
	*r = SchemaRef{Name: j.Name, Version: j.Version, Schema: s}
	return nil
}

// normalized fills the defaults and checks m; the server uses the result.
func (m Manifest) normalized() (Manifest, error) {
	if m.Language == "" {
		m.Language = Language
	}
	if m.Protocol == "" {
		m.Protocol = Protocol
	}
	if m.MaxBatchRows == 0 {
		m.MaxBatchRows = DefaultMaxBatchRows
	}
	if m.MaxBatchBytes == 0 {
		m.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if m.Ordering == "" {
		m.Ordering = OrderingPreserve
	}
	if m.Errors == "" {
		m.Errors = ErrorsRow
	}
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(m.Name != "", "name is empty")
	check(m.Version != "", "version is empty")
	check(m.Protocol == Protocol, "protocol %q: this SDK speaks %q", m.Protocol, Protocol)
	check(m.MaxBatchRows > 0, "max_batch_rows %d is not positive", m.MaxBatchRows)
	check(m.MaxBatchBytes > 0 && m.MaxBatchBytes <= MaxMessageSize,
		"max_batch_bytes %d is not in 1..%d (the gRPC message limit)", m.MaxBatchBytes, MaxMessageSize)
	check(m.Ordering == OrderingPreserve || m.Ordering == OrderingNone, "ordering %q is not preserve or none", m.Ordering)
	check(m.Errors == ErrorsRow || m.Errors == ErrorsFatalOnly, "errors %q is not row or fatal_only", m.Errors)
	check(m.InputSchema == nil || m.InputSchema.Schema != nil, "input_schema %q has no Arrow schema (use a nil *SchemaRef for any schema)", refName(m.InputSchema))
	check(m.OutputSchema == nil || m.OutputSchema.Schema != nil, "output_schema %q has no Arrow schema", refName(m.OutputSchema))
	check(m.OutputSchema != nil || m.InputSchema == nil, "output_schema is null but input_schema is not: a null output means output = input, which needs any input")
	if err := errors.Join(errs...); err != nil {
		return m, fmt.Errorf("stage: invalid manifest of %q: %w", m.Name, err)
	}
	return m, nil
}

func refName(r *SchemaRef) string {
	if r == nil {
		return ""
	}
	return r.Name
}

// marshalNoHTMLEscape is json.Marshal without the HTML escaping of <, > and &
// (text in sluice JSON is written as is).
func marshalNoHTMLEscape(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
