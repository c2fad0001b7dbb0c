package stage

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/flight"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// The versions of the stage protocol (docs/protocol.md). This SDK speaks
// both; the engine and the stage agree on one in "describe".
const (
	// ProtocolV1 is the first version.
	ProtocolV1 = "sluice.stage.v1"
	// ProtocolV1_1 adds the manifest's "plain_types" and "timing", the
	// engine's list of versions in the describe request, and the snapshots
	// of stateful stages (Snapshotter).
	ProtocolV1_1 = "sluice.stage.v1.1"
	// Protocol is the newest version this SDK speaks.
	Protocol = ProtocolV1_1
)

// Protocols returns the versions this SDK speaks, newest first.
func Protocols() []string { return []string{ProtocolV1_1, ProtocolV1} }

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

	// Protocol is the newest protocol version the stage speaks: empty for
	// Protocol (the SDK's newest); ProtocolV1 restricts the stage to v1.
	// The stage speaks every version of Protocols() from this one down. In
	// a describe answer it is the version agreed with the engine: the
	// newest both speak.
	Protocol string `json:"protocol"`

	// InputSchema nil: the stage accepts any schema. OutputSchema nil: the
	// output schema is the input schema; allowed only when InputSchema is nil.
	InputSchema  *SchemaRef `json:"input_schema"`
	OutputSchema *SchemaRef `json:"output_schema"`

	// The engine slices input so that no batch is larger. Zero means the
	// defaults; MaxBatchBytes may not exceed MaxMessageSize.
	MaxBatchRows  int64 `json:"max_batch_rows"`
	MaxBatchBytes int64 `json:"max_batch_bytes"`

	// Stateful: output depends on earlier batches of the exchange, so Flush
	// matters; in a v1.1 exchange the state also takes part in commits: it
	// starts from OpenRequest.Snapshot and the Processor must implement
	// Snapshotter.
	Stateful bool        `json:"stateful"`
	Ordering Ordering    `json:"ordering"` // OrderingPreserve when empty
	Errors   ErrorPolicy `json:"errors"`   // ErrorsRow when empty

	// PlainTypes (v1.1) asks the engine to cast view types before sending:
	// Utf8View to Utf8, BinaryView to Binary, nested ones too, so that the
	// stage never sees them. Written only when true, and not to a v1 engine.
	PlainTypes bool `json:"plain_types,omitempty"`

	// Timing (v1.1) is the stage's promise on latency, which the engine
	// measures and reports breaches of. nil: no promise. Not written to a
	// v1 engine.
	Timing *Timing `json:"timing,omitempty"`

	// SharedMemory (v1.1) tells the engine the stage reads and writes
	// batches in shared memory when it runs as the engine's child
	// (protocol.md section 8). The SDK sets it when it describes the stage:
	// it implements that path for every stage; what a stage sets is ignored.
	SharedMemory bool `json:"shared_memory,omitempty"`
}

// Timing is the latency a stage promises (manifest key "timing", v1.1).
// Both are required, at least a millisecond, and BatchP99 ≤ MaxAnswer; in
// JSON they are whole milliseconds ("batch_p99_ms", "max_answer_ms"), a
// fraction of one rounded up.
type Timing struct {
	// BatchP99 is the 99th percentile of the round trip of one batch: from
	// the engine sending it to the stage's answer.
	BatchP99 time.Duration
	// MaxAnswer is the longest the stage takes to answer one batch.
	MaxAnswer time.Duration
}

type timingJSON struct {
	BatchP99MS  int64 `json:"batch_p99_ms"`
	MaxAnswerMS int64 `json:"max_answer_ms"`
}

// MarshalJSON writes {"batch_p99_ms":N,"max_answer_ms":M}.
func (t Timing) MarshalJSON() ([]byte, error) {
	return json.Marshal(timingJSON{ceilMS(t.BatchP99), ceilMS(t.MaxAnswer)})
}

// UnmarshalJSON reads {"batch_p99_ms":N,"max_answer_ms":M}; both must be
// positive integers, and no other key is allowed.
func (t *Timing) UnmarshalJSON(b []byte) error {
	var j struct {
		BatchP99MS  *int64 `json:"batch_p99_ms"`
		MaxAnswerMS *int64 `json:"max_answer_ms"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return fmt.Errorf("stage: timing: %w", err)
	}
	if j.BatchP99MS == nil || j.MaxAnswerMS == nil || *j.BatchP99MS <= 0 || *j.MaxAnswerMS <= 0 {
		return fmt.Errorf("stage: timing %s: batch_p99_ms and max_answer_ms must be positive integers", b)
	}
	*t = Timing{BatchP99: time.Duration(*j.BatchP99MS) * time.Millisecond, MaxAnswer: time.Duration(*j.MaxAnswerMS) * time.Millisecond}
	return nil
}

func ceilMS(d time.Duration) int64 {
	ms := int64(d / time.Millisecond)
	if d%time.Millisecond > 0 {
		ms++
	}
	return ms
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
	check(slices.Contains(Protocols(), m.Protocol), "protocol %q: this SDK speaks %s", m.Protocol, strings.Join(Protocols(), ", "))
	if m.Protocol == ProtocolV1 {
		check(!m.PlainTypes, "plain_types needs protocol %s, the manifest says %s", ProtocolV1_1, ProtocolV1)
		check(m.Timing == nil, "timing needs protocol %s, the manifest says %s", ProtocolV1_1, ProtocolV1)
	}
	if t := m.Timing; t != nil {
		check(t.BatchP99 >= time.Millisecond && t.MaxAnswer >= time.Millisecond,
			"timing: batch p99 %v and max answer %v must both be at least 1ms", t.BatchP99, t.MaxAnswer)
		check(t.BatchP99 <= t.MaxAnswer, "timing: batch p99 %v is more than the max answer %v", t.BatchP99, t.MaxAnswer)
	}
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

// speaks lists the protocol versions of a normalized manifest, newest
// first: those of the SDK from m.Protocol down.
func (m Manifest) speaks() []string {
	all := Protocols()
	return all[slices.Index(all, m.Protocol):]
}

// forProtocol is the manifest as described to an engine that agreed on
// version v: without the keys v does not have.
func (m Manifest) forProtocol(v string) Manifest {
	m.Protocol = v
	m.SharedMemory = v != ProtocolV1
	if v == ProtocolV1 {
		m.PlainTypes, m.Timing = false, nil
	}
	return m
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
