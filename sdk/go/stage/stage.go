package stage

import (
	"bytes"
	"context"
	"encoding/json"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// Stage is an external stage: what Serve serves.
//
// A Stage is shared by all exchanges of the process, which run
// concurrently: keep per-exchange state in the Processor that Open returns,
// not in the Stage. Embed Base to get the default Health.
type Stage interface {
	// Manifest describes the stage. It is called once, when the server is
	// built; the SDK fills the defaults (see Manifest) and checks every
	// exchange against the result.
	Manifest() Manifest

	// Open starts one exchange: one partition of one epoch. req carries the
	// open request of the engine, with the pipeline's config for this stage,
	// and the input schema, already checked against the manifest. The
	// returned Processor sees every batch of the exchange, in order, from one
	// goroutine.
	//
	// An error fails the exchange before any input is processed: return
	// Fatal(InvalidArgument, ...) for a bad config (req.DecodeConfig does),
	// Fatal(Unavailable, ...) when a dependency is down; any other error is
	// INTERNAL.
	Open(ctx context.Context, req OpenRequest) (Processor, error)

	// Health answers the "health" action. A non-nil error makes it fail
	// with gRPC UNAVAILABLE, and the engine does not send work.
	Health(ctx context.Context) error
}

// Processor transforms the batches of one exchange. Embed Base for the
// default Flush, or use ProcessorFunc.
//
// If a Processor also implements io.Closer, Close is called once when the
// exchange ends, however it ends (flushed, failed or cancelled): release
// held records there.
type Processor interface {
	// Process transforms one input record.
	//
	// Ownership: rec belongs to the SDK and is released when Process
	// returns; Retain it to keep it longer (a stateful stage buffering rows).
	// out is handed over to the SDK, which releases it once sent: to pass
	// rec through unchanged, call rec.Retain() and return rec. Build new
	// records with OpenRequest.Allocator.
	//
	// Passing rec through costs no copy back when the engine offers it
	// (v1.1): an out that is rec itself (the same arrays, in the same order,
	// all rows; also stamped with the output schema) goes as an "unchanged"
	// message naming the batch, and the engine reuses the batch it holds
	// (when the input schema passes for the output schema as the engine
	// compares types, nested field names and metadata included; otherwise
	// as rows). A copy or a slice, even of equal values, goes as rows. An
	// out that is rec itself with row errors for the same batch breaks the
	// rule below and is INTERNAL, whether or not the engine offers
	// "unchanged" answers.
	//
	// out may be nil or have zero rows: the SDK then answers the batch with
	// an "ack". Its schema must be OpenRequest.OutputSchema (field names,
	// types and nullability; metadata is ignored), and a not-null column
	// must hold no null, else the exchange fails with SCHEMA_MISMATCH.
	//
	// Filter and error rules: a row that is not in out and not in rowErrs
	// is filtered out silently. A RowError's Row is the index of the row in
	// rec (the input), never in out; a failed row must not also appear in
	// out. Codes must be valid, and a stage whose manifest says
	// errors = "fatal_only" must not report any: both are INTERNAL fatal.
	//
	// A non-nil err is fatal: the exchange ends with that error (an *Error
	// made with Fatal keeps its code, anything else is INTERNAL) and the
	// epoch fails. out and rowErrs are then ignored (out is released).
	// ctx is cancelled when the exchange is; Traceparent(ctx) gives the
	// trace context of the batch.
	Process(ctx context.Context, rec arrow.RecordBatch) (out arrow.RecordBatch, rowErrs []RowError, err error)

	// Flush is called once after the last input batch, when the engine ends
	// the epoch, and never when the exchange fails. A stateful stage returns
	// what it held back; the records are handed over to the SDK like out of
	// Process, and sent before "flushed". A stateless stage returns nil.
	Flush(ctx context.Context) ([]arrow.RecordBatch, error)
}

// Snapshotter is implemented by the Processor of a stateful stage (its
// manifest says Stateful) for protocol v1.1, where the stage's state takes
// part in the engine's commits. One exchange is one partition of one epoch:
// the exchange starts from OpenRequest.Snapshot, and after Flush, when the
// engine has ended the epoch, the SDK calls Snapshot once and sends what it
// returns in the "flushed" message (base64). The engine commits it with the
// epoch and hands it back in the open request of the partition's next
// exchange, or of the replay of this epoch if it fails.
//
// Snapshot returns the complete state after the exchange, in any encoding
// the stage reads back in Open; nil or empty is an empty state. It is not
// called when the exchange fails, nor for a v1 exchange or a stage that is
// not stateful. An error fails the exchange (an *Error made with Fatal
// keeps its code, anything else is INTERNAL), and no "flushed" is sent.
//
// A stateful stage whose Processor does not implement Snapshotter fails
// every v1.1 exchange with INTERNAL.
type Snapshotter interface {
	Snapshot(ctx context.Context) ([]byte, error)
}

// Base gives a Stage or Processor the defaults: healthy, nothing to flush.
// Embed it and override only what you need.
type Base struct{}

// Health reports the stage healthy.
func (Base) Health(context.Context) error { return nil }

// Flush returns no record: the stage holds no state.
func (Base) Flush(context.Context) ([]arrow.RecordBatch, error) { return nil, nil }

// ProcessorFunc turns a function into a stateless Processor.
type ProcessorFunc func(ctx context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []RowError, error)

// Process calls f.
func (f ProcessorFunc) Process(ctx context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []RowError, error) {
	return f(ctx, rec)
}

// Flush returns no record.
func (ProcessorFunc) Flush(context.Context) ([]arrow.RecordBatch, error) { return nil, nil }

// OpenRequest is the first message of an exchange: the JSON "open" request
// of protocol.md section 3 and what the SDK knows about the exchange.
type OpenRequest struct {
	Protocol  string          `json:"protocol"` // the version of the exchange: ProtocolV1_1 or ProtocolV1
	Stage     string          `json:"stage"`    // the stage's name in the pipeline
	Epoch     uint64          `json:"epoch"`
	Partition uint32          `json:"partition"`
	Config    json.RawMessage `json:"config,omitempty"` // the stage's config table; may be empty

	// Snapshot is the open request's "snapshot" (v1.1, a stateful stage):
	// the state that the last committed epoch left for this stage and
	// partition, as the stage's Snapshotter returned it (decoded from the
	// base64 of the wire; an undecodable one fails the exchange with
	// INVALID_ARGUMENT before Open). nil when there is none: the first
	// epoch, a stage that is not stateful, a v1 exchange. A stateful stage
	// must start the exchange from exactly this state, never from what it
	// holds in memory: after a failed epoch the engine replays it from the
	// last commit's snapshot. An empty non-nil Snapshot is an empty state.
	Snapshot []byte `json:"-"`

	// Set by the SDK, not sent by the engine.

	// InputSchema is the schema of the input records.
	InputSchema *arrow.Schema `json:"-"`
	// OutputSchema is the schema output records must have: the manifest's
	// output schema, or InputSchema when that is null.
	OutputSchema *arrow.Schema `json:"-"`
	// Allocator is the allocator of the server (WithAllocator); build output
	// records with it.
	Allocator memory.Allocator `json:"-"`
}

// DecodeConfig decodes the config table into v (a pointer to a struct with
// json tags). Keys that v does not have are an error, so a typo in the
// pipeline file fails loudly; fields absent from the config keep the value
// v had, which is how defaults are set. Errors are Fatal(InvalidArgument).
func (r OpenRequest) DecodeConfig(v any) error {
	if len(bytes.TrimSpace(r.Config)) == 0 || bytes.Equal(bytes.TrimSpace(r.Config), []byte("null")) {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(r.Config))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return Fatal(InvalidArgument, "stage %q: config: %v", r.Stage, err)
	}
	return nil
}

type traceparentKey struct{}

// Traceparent returns the W3C trace context the engine sent with the batch
// being processed, or "" (inside Process; ctx is Process's context).
func Traceparent(ctx context.Context) string {
	s, _ := ctx.Value(traceparentKey{}).(string)
	return s
}
