package stage

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/flight"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/sluice-etl/sluice/sdk/go/internal/envelope"
	"github.com/sluice-etl/sluice/sdk/go/internal/schemacheck"
)

// DoExchange serves one exchange (protocol.md section 3) as a pipeline of
// three goroutines joined by unbuffered channels:
//
//	read (own goroutine)     FlightData → input records + envelopes
//	process (own goroutine)  Processor.Process per batch, then Flush → answers
//	write (this goroutine)   answers → FlightData with envelopes, "flushed"
//
// so decoding batch n+1, processing batch n and sending the output of batch
// n-1 overlap. The channels are unbuffered on purpose: a record is always
// owned by exactly one goroutine (a send that completes hands it over; one
// abandoned on cancellation is released by its sender), so nothing is left
// in a channel when the exchange stops. The first error of any step cancels
// ctx with that error as the cause, which stops the others.
func (s *service) DoExchange(stream flight.FlightService_DoExchangeServer) error {
	start := time.Now()
	x := &exchange{svc: s, stream: stream}
	err := x.run()
	x.span.end(err)
	level := slog.LevelWarn
	if status.Code(err) == codes.Canceled || errors.Is(err, context.Canceled) {
		level = slog.LevelInfo // the engine gave up on the epoch: nothing wrong here
	}
	ctx := x.span.context(context.Background())
	if err != nil {
		s.log.Log(ctx, level, "exchange failed", "pipeline_stage", x.req.Stage, "epoch", x.req.Epoch,
			"partition", x.req.Partition, "error", err)
	} else {
		s.log.DebugContext(ctx, "exchange flushed", "pipeline_stage", x.req.Stage, "epoch", x.req.Epoch,
			"partition", x.req.Partition, "rows", x.rows, "elapsed_s", since(start))
	}
	return toStatus(err)
}

type exchange struct {
	svc    *service
	stream flight.FlightService_DoExchangeServer
	req    OpenRequest

	// stateful: the manifest says stateful and the exchange is v1.1, so the
	// stage's state takes part in commits: "flushed" carries its snapshot.
	stateful bool

	// shm is the exchange's shared memory (protocol.md section 8), when the
	// engine offered it; nil otherwise.
	shm *sharedMemory

	// unchanged: the engine takes "unchanged" answers (v1.1, offered in the
	// open request) and the input schema passes for the output schema as the
	// engine compares them (schemacheck.Exact), so an output that is the
	// input record itself goes back as one small message naming it instead
	// of its rows.
	unchanged bool

	// Owned by the writer (the handler goroutine).
	seq  uint64 // the next envelope's seq: every message with an envelope counts
	rows uint64 // output rows sent, for "flushed"
	out  *outputStream
	w    *flight.Writer // output over Flight
	// slots writes output into the stage's half of the shared memory; nil
	// without one. flightStale: the last batch went there, so the Flight
	// writer must send its dictionaries again (the engine keeps one set).
	slots       *slotWriter
	flightStale bool

	span exchangeSpan // a child of the engine's exchange span (telemetry.go)
}

// input is one input batch on its way to the processing step.
type input struct {
	rec arrow.RecordBatch
	env envelope.Envelope
}

// answer is what the processing step hands to the writer.
type answer struct {
	inSeq   *uint64           // the input batch answered; nil for Flush output
	rec     arrow.RecordBatch // output rows, or nil: an "ack" when inSeq is set
	errs    []envelope.RowError
	flushed bool // the last answer: send "flushed"
	// snapshot is the state of a stateful v1.1 stage after the exchange,
	// base64, for "flushed"; nil otherwise.
	snapshot *string
	// unchanged: the output is input batch inSeq itself, of that many rows
	// (0: it is not); rec is then nil and an "unchanged" goes instead.
	unchanged int64
}

func (a answer) release() {
	if a.rec != nil {
		a.rec.Release()
	}
}

func (x *exchange) run() error {
	ctx, cancel := context.WithCancelCause(x.stream.Context())
	defer cancel(nil)
	mem := x.svc.mem

	// 1. The first message carries the open request (descriptor) and the
	// input schema.
	in := &inputStream{stream: x.stream}
	msgs := newMessageReader(in)
	rdr, err := ipc.NewReaderFromMessageReader(msgs, ipc.WithAllocator(mem))
	if err != nil {
		msgs.Release()
		return inputError("reading the open request and input schema", err)
	}
	readerStarted := false
	defer func() {
		if !readerStarted {
			rdr.Release()
		}
	}()
	err = x.open(msgs.descriptor, rdr.Schema())
	if x.shm != nil { // mapped, even if open failed after mapping it
		defer x.shm.close() // unmapped once no input buffer reads it either
		in.shm = x.shm
	}
	if err != nil {
		return err
	}
	var proc Processor
	err = guard("Open", x.svc.log, func() (err error) {
		proc, err = x.svc.stage.Open(ctx, x.req)
		return err
	})
	if err != nil {
		return err
	}
	if proc == nil {
		return Fatal(Internal, "stage %q: Open returned a nil Processor", x.svc.manifest.Name)
	}
	if c, ok := proc.(io.Closer); ok {
		defer func() { _ = guard("Close", x.svc.log, c.Close) }()
	}
	if _, ok := proc.(Snapshotter); x.stateful && !ok {
		// found before any work is done: "flushed" could not be sent
		return Fatal(Internal, "stage %q is stateful and the exchange is %s, so its state is committed with each epoch: its Processor (%T) must implement stage.Snapshotter (Snapshot(ctx) ([]byte, error))",
			x.svc.manifest.Name, ProtocolV1_1, proc)
	}

	// 2. The answer starts with the output schema, sent now rather than
	// with the first output batch: an "ack" or "row_errors" may come first.
	x.out = &outputStream{stream: x.stream, shm: x.shm, epoch: x.req.Epoch}
	if err := x.out.sendSchema(x.req.OutputSchema, mem); err != nil {
		return err
	}
	x.w = flight.NewRecordWriter(x.out, ipc.WithSchema(x.req.OutputSchema), ipc.WithAllocator(mem))
	defer func() { x.w.Close() }() // releases the writer's dictionaries; never sends (see outputStream)
	if x.shm != nil {
		x.slots = &slotWriter{s: x.shm, schema: x.req.OutputSchema, mem: mem}
		defer x.slots.reset()
	}

	// 3. The pipeline.
	inputs := make(chan input)
	answers := make(chan answer)
	readerStarted = true
	go x.read(ctx, cancel, rdr, msgs, in, inputs)
	go x.process(ctx, cancel, proc, inputs, answers)
	return x.write(ctx, cancel, answers)
}

// open parses and checks the open request and the input schema, and
// decides the output schema.
func (x *exchange) open(desc *flight.FlightDescriptor, inSchema *arrow.Schema) error {
	m := x.svc.manifest
	if desc == nil || desc.GetType() != flight.DescriptorCMD || len(desc.GetCmd()) == 0 {
		return Fatal(InvalidArgument, "the first message must carry a CMD FlightDescriptor whose cmd is the open request")
	}
	if err := json.Unmarshal(desc.GetCmd(), &x.req); err != nil {
		return Fatal(InvalidArgument, "open request: %v", err)
	}
	if !slices.Contains(x.svc.speaks, x.req.Protocol) {
		// the words of the Rust SDK
		return Fatal(InvalidArgument, "the engine opened the exchange in %s; this stage speaks %s", x.req.Protocol, strings.Join(x.svc.speaks, ", "))
	}
	var snap struct {
		Snapshot *string `json:"snapshot"` // null: none
	}
	if err := json.Unmarshal(desc.GetCmd(), &snap); err != nil { // valid JSON (above): the snapshot is not a string
		return Fatal(InvalidArgument, "open request: snapshot: %v; want a base64 string or null", err)
	}
	if snap.Snapshot != nil {
		b, err := base64.StdEncoding.DecodeString(*snap.Snapshot)
		if err != nil {
			return Fatal(InvalidArgument, "open request: snapshot: not base64 (standard alphabet, padded): %v", err)
		}
		x.req.Snapshot = b
	}
	x.stateful = m.Stateful && x.req.Protocol == ProtocolV1_1
	if inSchema == nil {
		return Fatal(InvalidArgument, "the first message carries no input schema")
	}
	if m.InputSchema != nil {
		if err := schemacheck.Compatible(m.InputSchema.Schema, inSchema); err != nil {
			return Fatal(SchemaMismatch, "stage %q: input %v (declared %s v%s)", m.Name, err, m.InputSchema.Name, m.InputSchema.Version)
		}
	}
	x.req.InputSchema = inSchema
	x.req.OutputSchema = inSchema // a null output schema: output = input
	if m.OutputSchema != nil {
		x.req.OutputSchema = m.OutputSchema.Schema
	}
	x.req.Allocator = x.svc.mem
	// Every key is read before shared memory is mapped: a bad one fails the
	// exchange with nothing to unmap.
	if x.req.Protocol == ProtocolV1_1 { // a v1 engine never offers it: the key means nothing there
		var take struct {
			Unchanged *bool `json:"unchanged"` // null: not offered
		}
		if err := json.Unmarshal(desc.GetCmd(), &take); err != nil {
			return Fatal(InvalidArgument, "open request: unchanged: %v; want true or false", err)
		}
		// The engine reuses its input batch under the output schema and
		// checks it there as declared (not the data), with its own strict
		// type comparison, so an input schema that does not pass for the
		// output schema that way (a nullable field declared not null on the
		// way out, another name or metadata of a nested field) goes back
		// as rows, stamped.
		x.unchanged = take.Unchanged != nil && *take.Unchanged &&
			schemacheck.Exact(x.req.OutputSchema, inSchema) == nil
	}
	var offer struct {
		SharedMemory *shmOffer `json:"shared_memory"`
	}
	if err := json.Unmarshal(desc.GetCmd(), &offer); err != nil {
		return Fatal(InvalidArgument, "open request: shared_memory: %v", err)
	}
	if offer.SharedMemory != nil {
		// Mapped last, once every other key has passed (run unmaps it
		// should open still fail after this).
		//
		// Only the process on the other end of the stage's unix socket
		// shares memory with it, and only a memory file it holds: a client
		// elsewhere (TCP) could name any file of this machine for the stage
		// to read unchecked and write into.
		p, ok := peer.FromContext(x.stream.Context())
		var from peerInfo
		if ok {
			from, ok = p.AuthInfo.(peerInfo)
		}
		if !ok || from.pid == 0 {
			return Fatal(InvalidArgument, "open request: shared memory is taken only from an engine on the stage's unix socket, served without TLS by stage.Serve or stage.NewServer")
		}
		shm, err := openSharedMemory(offer.SharedMemory, from.pid, x.svc.inPlace)
		if err != nil {
			return err
		}
		x.shm = shm
	}
	return nil
}

// read decodes input batches and hands them to the processing step. It
// closes inputs only after "end"; on any other outcome it cancels ctx.
//
// It is not waited for: when the exchange fails while the engine is still
// sending, it may be blocked in Recv, which returns once the handler has
// returned and gRPC ends the stream. It holds no record while blocked.
func (x *exchange) read(ctx context.Context, cancel context.CancelCauseFunc, rdr *ipc.Reader, msgs *messageReader, in *inputStream, inputs chan<- input) {
	defer rdr.Release()
	for rdr.Next() {
		rec := rdr.RecordBatch()
		env, err := x.checkInput(msgs.appMetadata, rec)
		if err != nil {
			cancel(err)
			return
		}
		rec.Retain() // the reader reuses its reference on Next
		select {
		case inputs <- input{rec: rec, env: env}:
		case <-ctx.Done():
			rec.Release()
			return
		}
	}
	switch {
	case rdr.Err() != nil:
		cancel(inputError("reading input", rdr.Err()))
	case in.end == nil:
		cancel(Fatal(InvalidArgument, `the input ended without an "end" message`))
	case in.end.Epoch != x.req.Epoch:
		cancel(Fatal(InvalidArgument, `"end" is for epoch %d, the exchange is for epoch %d`, in.end.Epoch, x.req.Epoch))
	default:
		close(inputs)
		if in.shm != nil {
			// the engine goes on giving the stage's slots back after "end"
			// (protocol.md section 8): Recv frees each as it reads it, so
			// the flush output can use them again. It returns at anything
			// else, or when the exchange is over.
			fd, err := in.Recv()
			switch {
			case ctx.Err() != nil || err == io.EOF || (err == nil && fd == nil):
			case err != nil:
				x.svc.log.Warn("sluice stage: after end, the engine broke the protocol", "stage", x.svc.manifest.Name, "error", err)
			default:
				x.svc.log.Warn("sluice stage: after end, the engine sent more than releases; not read", "stage", x.svc.manifest.Name)
			}
		}
	}
}

func (x *exchange) checkInput(meta []byte, rec arrow.RecordBatch) (envelope.Envelope, error) {
	if len(meta) == 0 {
		return envelope.Envelope{}, Fatal(InvalidArgument, "an input batch has no envelope (app_metadata)")
	}
	env, err := envelope.Decode(meta)
	if err != nil {
		return env, Fatal(InvalidArgument, "input batch: %v", err)
	}
	if env.Kind != envelope.Batch {
		return env, Fatal(InvalidArgument, "an input message with a body has kind %q, want %q", env.Kind, envelope.Batch)
	}
	if env.Epoch != x.req.Epoch {
		return env, Fatal(InvalidArgument, "input batch seq %d is for epoch %d, the exchange is for epoch %d", env.Seq, env.Epoch, x.req.Epoch)
	}
	if n := rec.NumRows(); n > x.svc.manifest.MaxBatchRows {
		return env, Fatal(InvalidArgument, "input batch seq %d has %d rows, more than max_batch_rows %d", env.Seq, n, x.svc.manifest.MaxBatchRows)
	}
	return env, nil
}

// process runs the Processor over every input batch, in order, then Flush
// after "end", then Snapshot for a stateful v1.1 exchange. It closes answers
// when it returns, after the final answer on success, early on failure.
func (x *exchange) process(ctx context.Context, cancel context.CancelCauseFunc, proc Processor, inputs <-chan input, answers chan<- answer) {
	defer close(answers)
	send := func(a answer) bool {
		select {
		case answers <- a:
			return true
		case <-ctx.Done():
			a.release()
			return false
		}
	}
	for {
		var (
			in input
			ok bool
		)
		select {
		case in, ok = <-inputs:
		case <-ctx.Done():
			return
		}
		if !ok {
			break // "end": every input batch is processed
		}
		a, err := x.processOne(ctx, proc, in)
		if err != nil {
			cancel(err)
			return
		}
		if !send(a) {
			return
		}
	}

	var recs []arrow.RecordBatch
	err := guard("Flush", x.svc.log, func() (err error) {
		recs, err = proc.Flush(ctx)
		return err
	})
	for _, rec := range recs {
		switch {
		case rec == nil:
		case err != nil || rec.NumRows() == 0:
			rec.Release() // nothing more is sent after a failure; an empty record has nothing to send
		default:
			if rec, err = x.conform(rec); err == nil && !send(answer{rec: rec}) {
				err = context.Cause(ctx)
			}
		}
	}
	if err != nil {
		cancel(err)
		return
	}
	final := answer{flushed: true}
	if x.stateful {
		var state []byte
		err := guard("Snapshot", x.svc.log, func() (err error) {
			state, err = proc.(Snapshotter).Snapshot(ctx) // checked at open
			return err
		})
		if err != nil {
			cancel(err)
			return
		}
		final.snapshot = envelope.String(base64.StdEncoding.EncodeToString(state))
	}
	send(final)
}

// processOne calls Process on one input batch and checks what it returns.
// It releases the input record.
func (x *exchange) processOne(ctx context.Context, proc Processor, in input) (answer, error) {
	defer in.rec.Release()
	if in.env.Traceparent != "" {
		ctx = context.WithValue(ctx, traceparentKey{}, in.env.Traceparent)
		ctx = x.span.start(ctx, x.svc.tracer, in.env.Traceparent, x.req)
	}
	var (
		out     arrow.RecordBatch
		rowErrs []RowError
	)
	err := guard("Process", x.svc.log, func() (err error) {
		out, rowErrs, err = proc.Process(ctx, in.rec)
		return err
	})
	if err != nil {
		if out != nil {
			out.Release()
		}
		return answer{}, err
	}
	a := answer{inSeq: envelope.Uint64(in.env.Seq)}
	if out != nil {
		if out.NumRows() == 0 {
			out.Release() // Flight cannot send an empty body: this becomes an "ack"
		} else if a.rec, err = x.conform(out); err != nil {
			return answer{}, err
		}
	}
	if a.errs, err = x.rowErrors(rowErrs, in.rec.NumRows()); err != nil {
		a.release()
		return answer{}, err
	}
	if a.rec == nil || !isInput(a.rec, in.rec) {
		return a, nil
	}
	// The output is the input itself, every row of it: row errors for the
	// batch would be rows delivered and reported both. Refused whether or
	// not the engine takes "unchanged" answers, so that its offer (a
	// pipeline key) never decides whether a stage passes.
	if len(a.errs) > 0 {
		a.release()
		return answer{}, Fatal(Internal, "stage %q answered input batch seq %d with its input unchanged and reported %d row error(s) for it: a stage must leave the rows it reports out of its output, or they are delivered and reported both",
			x.svc.manifest.Name, in.env.Seq, len(a.errs))
	}
	if x.unchanged {
		// released now, not once sent: an input read in place from shared
		// memory gives its slot back to the engine with its last reference
		a.rec.Release()
		a.rec, a.unchanged = nil, in.rec.NumRows()
	}
	return a, nil
}

// isInput reports whether out is the input record in, by construction: as
// many rows and columns, and every column the very same array data (conform
// may have stamped out with the output schema, around the same columns).
// An array's Data carries its type, offset, length, buffers, children and
// dictionary, so the same Data is the same values; a slice, a subset of the
// columns or a copy of equal values is other Data, and goes as rows.
// Comparing values instead would cost what sending them does.
func isInput(out, in arrow.RecordBatch) bool {
	if out.NumRows() != in.NumRows() || out.NumCols() != in.NumCols() {
		return false
	}
	for i := range out.NumCols() {
		if out.Column(int(i)).Data() != in.Column(int(i)).Data() {
			return false
		}
	}
	return true
}

// conform checks an output record against the output schema and returns it
// stamped with that schema (the stream has one schema; metadata or a
// stricter nullability may differ). It takes over rec: on error it is
// released.
func (x *exchange) conform(rec arrow.RecordBatch) (arrow.RecordBatch, error) {
	want := x.req.OutputSchema
	if !rec.Schema().Equal(want) {
		if err := schemacheck.Compatible(want, rec.Schema()); err != nil {
			rec.Release()
			return nil, Fatal(SchemaMismatch, "stage %q: output %v", x.svc.manifest.Name, err)
		}
		stamped := array.NewRecordBatch(want, rec.Columns(), rec.NumRows())
		rec.Release()
		rec = stamped
	}
	if err := schemacheck.NoNullsWhereNotNull(want, rec); err != nil {
		rec.Release()
		return nil, Fatal(SchemaMismatch, "stage %q: output %v", x.svc.manifest.Name, err)
	}
	return rec, nil
}

// rowErrors checks the row errors of one batch; a bad one is a bug of the
// stage, hence INTERNAL.
func (x *exchange) rowErrors(errs []RowError, inRows int64) ([]envelope.RowError, error) {
	if len(errs) == 0 {
		return nil, nil
	}
	m := x.svc.manifest
	if m.Errors == ErrorsFatalOnly {
		return nil, Fatal(Internal, `stage %q reported %d row error(s), but its manifest says errors = %q`, m.Name, len(errs), ErrorsFatalOnly)
	}
	out := make([]envelope.RowError, len(errs))
	seen := make(map[int64]bool, len(errs))
	for i, e := range errs {
		if e.Row < 0 || e.Row >= inRows {
			return nil, Fatal(Internal, "stage %q: a row error names row %d, the input batch has %d rows", m.Name, e.Row, inRows)
		}
		if seen[e.Row] { // the engine refuses it too (docs/protocol.md, section 5)
			return nil, Fatal(Internal, "stage %q: two row errors name row %d", m.Name, e.Row)
		}
		seen[e.Row] = true
		if !e.Code.Valid() {
			return nil, Fatal(Internal, "stage %q: the row error of row %d has the unknown code %q", m.Name, e.Row, e.Code)
		}
		// the message may be a value of the input batch, read in place from
		// shared memory the engine reuses once the input is released
		out[i] = envelope.RowError{Row: e.Row, Code: string(e.Code), Message: strings.Clone(e.Message)}
	}
	return out, nil
}

// write sends the answers, in order, with their envelopes. It returns nil
// once "flushed" is sent, else the cause of the failure. It always drains
// answers, so the processing step has returned when write does.
func (x *exchange) write(ctx context.Context, cancel context.CancelCauseFunc, answers <-chan answer) error {
	var failed error
	flushed := false
	for a := range answers {
		if failed == nil {
			if failed = x.send(a); failed != nil {
				cancel(failed)
			}
			flushed = a.flushed && failed == nil
		}
		a.release()
	}
	switch {
	case failed != nil:
		return failed
	case flushed:
		return nil
	case context.Cause(ctx) != nil:
		return context.Cause(ctx)
	}
	return Fatal(Internal, "the exchange ended without flushing") // unreachable
}

func (x *exchange) send(a answer) error {
	env := func(kind envelope.Kind) envelope.Envelope {
		e := envelope.Envelope{V: envelope.Version, Kind: kind, Epoch: x.req.Epoch, Seq: x.seq}
		x.seq++
		return e
	}
	if a.flushed {
		e := env(envelope.Flushed)
		e.Rows = envelope.Uint64(x.rows)
		e.Snapshot = a.snapshot
		return x.w.WriteMetadata(envelope.Encode(&e))
	}
	switch {
	case a.rec != nil:
		batchEnv := func() *envelope.Envelope {
			e := env(envelope.Batch)
			e.InSeq, e.Lineage = a.inSeq, &x.svc.lineage
			return &e
		}
		// In shared memory an answer goes whole (the message limit is
		// Flight's). Over Flight, one larger than the limit goes as several
		// "batch" messages with the same in_seq (Flush output: without one).
		sent, err := x.sendInSharedMemory(a.rec, batchEnv)
		if err != nil {
			return err
		}
		if sent {
			x.rows += uint64(a.rec.NumRows())
			break
		}
		pieces := splitRecord(a.rec, outputBudget)
		defer func() {
			for _, p := range pieces {
				p.Release()
			}
		}()
		for _, p := range pieces {
			if err := x.w.WriteWithAppMetadata(p, envelope.Encode(batchEnv())); err != nil {
				if status.Code(err) == codes.ResourceExhausted {
					return Fatal(Internal, "stage %q: an output message of %d rows, cut from a larger answer as estimated, is still larger than the gRPC message limit (%d bytes): %v",
						x.svc.manifest.Name, p.NumRows(), MaxMessageSize, err)
				}
				return err
			}
			x.rows += uint64(p.NumRows())
		}
	case a.unchanged > 0:
		// the engine reuses the batch it sent: its rows count as sent
		e := env(envelope.Unchanged)
		e.InSeq = a.inSeq
		if err := x.w.WriteMetadata(envelope.Encode(&e)); err != nil {
			return err
		}
		x.rows += uint64(a.unchanged)
	case a.inSeq != nil:
		e := env(envelope.Ack)
		e.InSeq = a.inSeq
		if err := x.w.WriteMetadata(envelope.Encode(&e)); err != nil {
			return err
		}
	}
	if len(a.errs) > 0 {
		e := env(envelope.RowErrors)
		e.InSeq, e.Errors = a.inSeq, a.errs
		return x.w.WriteMetadata(envelope.Encode(&e))
	}
	return nil
}

// sendInSharedMemory sends rec through the stage's half of the shared
// memory, if the exchange has one and a slot is free, with the envelope
// newEnv makes naming the slot. Otherwise sent is false, nothing is sent
// and rec goes over Flight, whose writer then sends its dictionaries again
// if the last batch went the other way.
func (x *exchange) sendInSharedMemory(rec arrow.RecordBatch, newEnv func() *envelope.Envelope) (sent bool, err error) {
	if x.slots != nil {
		slot, ok, err := x.slots.write(rec)
		if err != nil {
			return false, Fatal(Internal, "stage %q: writing output into shared memory: %v", x.svc.manifest.Name, err)
		}
		if ok {
			e := newEnv()
			e.Shm = &slot
			x.flightStale = true
			return true, x.w.WriteMetadata(envelope.Encode(e))
		}
	}
	if x.flightStale {
		x.w.Close()
		x.w = flight.NewRecordWriter(x.out, ipc.WithSchema(x.req.OutputSchema), ipc.WithAllocator(x.svc.mem))
		x.flightStale = false
	}
	return false, nil
}

// inputError classifies a failure to read input: a gRPC status of the
// stream (the engine cancelled) or an *Error stays as is; anything else
// means the engine sent something undecodable.
func inputError(what string, err error) error {
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return Fatal(InvalidArgument, "%s: %v", what, err)
}

// inputStream is what flight.NewRecordReader reads. The record reader
// only understands IPC messages, so metadata-only messages stop here: the
// only one the engine sends is "end", which becomes io.EOF, a clean end of
// the input.
type inputStream struct {
	stream  flight.FlightService_DoExchangeServer
	started bool
	end     *envelope.Envelope

	// shm is the exchange's shared memory, set after the open request;
	// slot names the shared memory of the message Recv last returned (nil:
	// the message carries its batch itself). The engine's releases of the
	// stage's slots stop here.
	shm  *sharedMemory
	slot *envelope.Slot
}

func (s *inputStream) Recv() (*flight.FlightData, error) {
	s.slot = nil
	for {
		fd, err := s.stream.Recv()
		if err != nil || !s.started {
			s.started = true // the first message is the open request; the reader handles it
			return fd, err
		}
		if len(fd.GetDataHeader()) > 0 || len(fd.GetDataBody()) > 0 {
			// a batch (or dictionary) in its message must not name a slot
			// too: it would be in two places
			if len(fd.GetAppMetadata()) > 0 {
				if env, err := envelope.Decode(fd.GetAppMetadata()); err == nil && env.Shm != nil {
					return nil, Fatal(InvalidArgument, "input message seq %d carries its IPC data and names a slot of shared memory too", env.Seq)
				}
			}
			return fd, nil
		}
		env, err := envelope.Decode(fd.GetAppMetadata())
		if err != nil {
			return nil, Fatal(InvalidArgument, "metadata-only input message: %v", err)
		}
		switch {
		case env.Shm != nil && s.shm == nil:
			return nil, Fatal(InvalidArgument, "a %q message names a slot of shared memory, but none was shared", env.Kind)
		case env.Kind == envelope.Release && env.Shm != nil:
			if err := s.shm.free(*env.Shm); err != nil {
				return nil, err
			}
			continue
		case env.Kind == envelope.Batch && env.Shm != nil:
			s.slot = env.Shm
			return fd, nil
		case env.Kind != envelope.End:
			return nil, Fatal(InvalidArgument, "a metadata-only input message has kind %q; only %q may have no body", env.Kind, envelope.End)
		}
		s.end = &env
		return nil, io.EOF
	}
}

// outputStream is what the flight.Writer writes to. The exchange sends
// the schema message itself, first; the writer's own copy, written lazily
// with the first batch, is dropped. And the writer attaches a batch's
// app_metadata to the dictionary messages written before it too: only the
// batch may carry the envelope.
type outputStream struct {
	stream     flight.FlightService_DoExchangeServer
	schemaSent bool
	// shm, when the exchange has shared memory: the engine slots whose
	// buffers are all released go back before each message.
	shm   *sharedMemory
	epoch uint64
}

// sendReleases gives back the engine's slots the stage is done with. A
// release does not count in seq.
func (o *outputStream) sendReleases() error {
	if o.shm == nil {
		return nil
	}
	for _, sl := range o.shm.takeReleased() {
		e := envelope.Envelope{V: envelope.Version, Kind: envelope.Release, Epoch: o.epoch, Shm: &sl}
		if err := o.stream.Send(&flight.FlightData{AppMetadata: envelope.Encode(&e)}); err != nil {
			return err
		}
	}
	return nil
}

func (o *outputStream) sendSchema(schema *arrow.Schema, mem memory.Allocator) error {
	p := ipc.GetSchemaPayload(schema, mem)
	defer p.Release()
	meta := p.Meta()
	defer meta.Release()
	o.schemaSent = true
	return o.stream.Send(&flight.FlightData{DataHeader: meta.Bytes()})
}

func (o *outputStream) Send(fd *flight.FlightData) error {
	if err := o.sendReleases(); err != nil {
		return err
	}
	switch messageType(fd.GetDataHeader()) {
	case ipc.MessageSchema:
		if o.schemaSent {
			return nil
		}
	case ipc.MessageDictionaryBatch:
		fd = &flight.FlightData{DataHeader: fd.GetDataHeader(), DataBody: fd.GetDataBody()}
	}
	return o.stream.Send(fd)
}

func messageType(header []byte) ipc.MessageType {
	if len(header) == 0 {
		return ipc.MessageNone
	}
	_, typ, err := readMeta(header)
	if err != nil {
		return ipc.MessageNone
	}
	return typ
}
