// Package stage writes sluice external stages in Go.
//
// A stage is a program that transforms Arrow record batches for a sluice
// pipeline, out of the engine's process. The engine talks to it over Arrow
// Flight with the stage protocol (docs/protocol.md in the repository),
// versions sluice.stage.v1.1 and sluice.stage.v1; this package implements
// the stage's side of it, so a stage is a type with four methods and a
// main that calls Serve.
//
// # Writing a stage
//
// Implement Stage (embed Base for the default Health) and return a
// Processor from Open (embed Base for the default Flush, or use
// ProcessorFunc):
//
//	type upper struct{ stage.Base }
//
//	func (upper) Manifest() stage.Manifest {
//		return stage.Manifest{
//			Name:         "upper",
//			Version:      "1.0.0",
//			InputSchema:  &stage.SchemaRef{Name: "names", Version: "1", Schema: names},
//			OutputSchema: &stage.SchemaRef{Name: "names", Version: "1", Schema: names},
//		}
//	}
//
//	func (upper) Open(ctx context.Context, req stage.OpenRequest) (stage.Processor, error) {
//		var cfg struct{ Locale string `json:"locale"` }
//		if err := req.DecodeConfig(&cfg); err != nil {
//			return nil, err // INVALID_ARGUMENT
//		}
//		return stage.ProcessorFunc(func(ctx context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
//			... build the output with req.Allocator ...
//		}), nil
//	}
//
//	func main() {
//		if err := stage.Serve(context.Background(), upper{}); err != nil {
//			log.Fatal(err)
//		}
//	}
//
// The engine starts the binary with SLUICE_STAGE_SOCKET set to a unix socket
// path, waits until the "health" action succeeds, and opens one exchange
// (one DoExchange stream) per partition and epoch; exchanges of one process
// run concurrently. sdk/go/examples has complete stages, totals a stateful
// one.
//
// # The contract
//
//   - Manifest is called once. It says what the stage accepts and produces:
//     a nil InputSchema accepts any schema, and a nil OutputSchema (allowed
//     only then) means output = input. The SDK fills the defaults (language
//     "go", protocol, 65536 rows and 32 MiB per batch, ordering "preserve",
//     errors "row") and refuses an inconsistent manifest before serving.
//     PlainTypes and Timing (protocol v1.1) ask the engine to cast view
//     types away and promise a latency.
//   - Open is called once per exchange with the open request: the pipeline's
//     name for the stage, epoch, partition, the stage's config table and the
//     input schema, already checked against the manifest (a mismatch fails
//     the exchange with SCHEMA_MISMATCH naming the field before Open).
//   - Process is called for every input batch of the exchange, in order,
//     from one goroutine; the input record is released by the SDK after it
//     returns, and the output record is handed over to the SDK, which sends
//     and releases it. Return rec.Retain()ed rec to pass it through; when
//     the engine offers "unchanged" answers (v1.1) that costs no copy back:
//     the SDK names the input batch instead of sending its rows, and the
//     engine reuses the batch it holds. Row errors for a batch answered
//     with rec itself are INTERNAL (its rows are all in the output), with
//     or without that offer.
//   - Flush is called once after the last batch, when the engine ends the
//     epoch: a stateful stage returns what it held back. It is not called
//     when the exchange fails; an io.Closer Processor is closed in every
//     case. Then, for a stateful stage in a v1.1 exchange, Snapshot (see
//     Stateful stages).
//   - Output records must have OpenRequest.OutputSchema (names, types,
//     nullability; metadata is ignored) and no null in a not-null column,
//     else the exchange fails with SCHEMA_MISMATCH naming the stage and the
//     field.
//
// The SDK does the protocol: it answers every input batch with an output
// batch, or with an "ack" when no row came out (or an "unchanged" when the
// output is the input record itself and the engine takes those), then a
// "row_errors" message if there are row errors; it stamps output batches with the lineage of the
// stage; and after Flush it sends "flushed" with the number of rows (and
// the snapshot of a stateful stage, v1.1). An
// output record too large for one gRPC message (over 32 MiB, estimated from
// its buffers) goes as several zero-copy row slices, "batch" messages
// answering the same input batch, each under the 64 MiB limit.
//
// # Protocol versions
//
// The SDK speaks ProtocolV1_1 and ProtocolV1. The engine's "describe"
// request lists the versions it speaks, {"protocols":[...]} (an empty body
// is a v1 engine), and the manifest comes back in the newest version both
// speak: its "protocol" says which, and the v1.1 keys "plain_types" and
// "timing" are left out for a v1 engine. With no version in common,
// describe fails with INVALID_ARGUMENT, "the engine speaks ...; this stage
// speaks sluice.stage.v1.1, sluice.stage.v1". An exchange opens with either
// version (OpenRequest.Protocol); any other is INVALID_ARGUMENT. A manifest
// whose Protocol is ProtocolV1 makes the stage speak only v1.
//
// # Stateful stages
//
// A stage whose manifest says Stateful has output that depends on earlier
// batches of the exchange (Flush matters). In a v1.1 exchange its state
// also takes part in the engine's commits, so that it survives epochs,
// failures and restarts. An exchange is one partition of one epoch, and the
// engine keeps the state per stage and partition:
//
//   - Open gets OpenRequest.Snapshot: the state the last committed epoch
//     left for this partition (nil for the first epoch). The Processor must
//     start from exactly that state, never from what the process still
//     holds: after a failed epoch the engine replays it from the snapshot
//     of the last commit. A snapshot that is not base64 fails the exchange
//     with INVALID_ARGUMENT before Open; one the stage cannot read should
//     too (Fatal(InvalidArgument, ...)).
//   - The Processor implements Snapshotter. After Flush, the SDK calls
//     Snapshot and sends the bytes, base64, as the "snapshot" of the
//     "flushed" message (an empty state is ""); the engine commits it with
//     the epoch. An error from Snapshot fails the exchange with its code.
//     A stateful stage whose Processor does not implement Snapshotter
//     fails every v1.1 exchange with INTERNAL, before any batch.
//
// In a v1 exchange, and for a stage that is not stateful, there is no
// snapshot either way and Snapshot is not called. The encoding of the state
// is the stage's own; keep it deterministic (encoding/json sorts map keys)
// and able to read what earlier versions of the stage wrote.
// examples/totals keeps running totals per key this way.
//
// # TLS and tokens
//
// A remote stage (SLUICE_STAGE_ADDR) should not serve anyone who can reach
// its port. Serve and NewServer read:
//
//   - SLUICE_STAGE_TLS_CERT and SLUICE_STAGE_TLS_KEY, PEM files: serve TLS
//     (one without the other is an error);
//   - SLUICE_STAGE_TLS_CLIENT_CA, a PEM file of CAs: clients must present a
//     certificate signed by one of them (mutual TLS);
//   - SLUICE_STAGE_TOKEN: every RPC must carry the gRPC metadata
//     "authorization: Bearer <token>", else it fails with UNAUTHENTICATED
//     ("no token: ..." or "wrong token"). The token is compared in constant
//     time and never logged nor put in an error.
//
// WithTLS and WithToken set the same in code and override the environment.
//
// # Filtering and errors
//
// A stage decides the fate of every input row:
//
//   - kept: the row (or what it became) is in the output record;
//   - filtered: the row is not in the output and not reported: it is gone,
//     and nobody counts it;
//   - failed: the row is not in the output and is reported as a RowError
//     whose Row is its index in the input record. The engine applies the
//     pipeline's on_error policy: fail the epoch, skip (drop and count) or
//     dead_letter (keep with the error). Use Malformed, TypeMismatch,
//     ConstraintViolation or Rejected. A stage whose manifest says
//     errors = "fatal_only" must not report row errors.
//
// Anything that is not about one row is fatal: return an error from Open,
// Process or Flush and the exchange ends with a gRPC status, and the epoch
// fails. The engine retries it only for the retryable codes Timeout and
// Unavailable (Code.Retryable), re-running it from its source offsets, so a
// retry never duplicates output. Build fatal errors with Fatal to choose the
// code (the status message is "[CODE] message"); any other error, and a
// panic, is INTERNAL. Input that does not match the manifest fails with
// SCHEMA_MISMATCH, a bad open request or config with INVALID_ARGUMENT.
//
// # Memory
//
// Records are reference counted (arrow-go's Retain/Release). Build outputs
// with OpenRequest.Allocator, which is the allocator given to WithAllocator;
// tests pass a memory.CheckedAllocator and assert that every byte comes
// back. A cancelled exchange (the engine gave up on the epoch) cancels the
// context passed to Open, Process and Flush; return promptly.
//
// # Shared memory
//
// When the engine starts the stage as its child, batches travel through
// memory both processes map (protocol.md section 8), three or four copies
// of a batch instead of twelve; Serve and NewServer do it for every stage
// served without TLS on the engine's unix socket (not Register, whose
// server has its own credentials) and the manifest says so. Each input batch is copied
// to the Go heap and the engine's memory given back at once, since Go
// strings taken from arrays point into their buffers. WithInPlaceInput
// reads input in place instead, one copy less: then copy what you keep past
// Process (strings.Clone, bytes.Clone), and know that a Retained input
// record holds a slot of the engine's memory until it is Released (which
// only costs speed: when the engine's half is full, batches go over
// Flight).
package stage
