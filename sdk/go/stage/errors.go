package stage

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Code is a sluice error code (protocol.md section 5). The same vocabulary
// serves row errors (usually Malformed, TypeMismatch, ConstraintViolation
// or Rejected) and fatal errors.
type Code string

// The codes of the protocol, and nothing else: the engine rejects others.
const (
	Malformed           Code = "MALFORMED"            // a row could not be parsed
	TypeMismatch        Code = "TYPE_MISMATCH"        // a value has the wrong type
	ConstraintViolation Code = "CONSTRAINT_VIOLATION" // a row breaks a declared constraint
	Rejected            Code = "REJECTED"             // the stage's own rule rejected a row
	Late                Code = "LATE"                 // the row's event time is behind the watermark
	SchemaMismatch      Code = "SCHEMA_MISMATCH"      // input or output does not match the manifest
	InvalidArgument     Code = "INVALID_ARGUMENT"     // bad open request or config
	Timeout             Code = "TIMEOUT"              // a deadline passed (retried)
	Unavailable         Code = "UNAVAILABLE"          // the stage cannot serve now (retried)
	Internal            Code = "INTERNAL"             // a bug
)

// Codes returns every code of the protocol, in the order of the table of
// protocol.md section 5 (testdata/protocol/error_codes.json).
func Codes() []Code {
	return []Code{Malformed, TypeMismatch, ConstraintViolation, Rejected, Late, SchemaMismatch,
		InvalidArgument, Timeout, Unavailable, Internal}
}

// Valid reports whether c is one of the codes of the protocol.
func (c Code) Valid() bool {
	switch c {
	case Malformed, TypeMismatch, ConstraintViolation, Rejected, Late, SchemaMismatch,
		InvalidArgument, Timeout, Unavailable, Internal:
		return true
	}
	return false
}

// GRPCCode is the gRPC status code a fatal error with code c ends the
// exchange with (the table of protocol.md section 5). An unknown code maps
// to codes.Internal.
func (c Code) GRPCCode() codes.Code {
	switch c {
	case Malformed, TypeMismatch, ConstraintViolation, Rejected, Late, SchemaMismatch, InvalidArgument:
		return codes.InvalidArgument
	case Timeout:
		return codes.DeadlineExceeded
	case Unavailable:
		return codes.Unavailable
	default:
		return codes.Internal
	}
}

// Retryable reports whether the engine retries an epoch that failed with c.
func (c Code) Retryable() bool { return c == Timeout || c == Unavailable }

// RowError reports that one row of an input record failed. The engine
// applies the stage's on_error policy to it (fail, skip or dead_letter).
type RowError struct {
	// Row is the index of the row in the input record passed to Process
	// (not in the output record), from 0.
	Row     int64
	Code    Code
	Message string
}

// NewRowError returns a RowError with a formatted message.
func NewRowError(row int64, code Code, format string, args ...any) RowError {
	return RowError{Row: row, Code: code, Message: fmt.Sprintf(format, args...)}
}

func (e RowError) String() string { return fmt.Sprintf("row %d: [%s] %s", e.Row, e.Code, e.Message) }

// Error is a fatal error: it ends the exchange with the gRPC status
// Code.GRPCCode() and the message "[CODE] message". Build one with Fatal.
type Error struct {
	Code    Code
	Message string
	wrapped error
}

// Fatal returns an *Error with a formatted message. A %w verb in format
// wraps its operand, as with fmt.Errorf, for errors.Is and errors.As.
//
// Return it from Open, Process or Flush to fail the exchange with that code;
// any other error fails it as INTERNAL.
func Fatal(code Code, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return &Error{Code: code, Message: err.Error(), wrapped: errors.Unwrap(err)}
}

// Error returns "[CODE] message", the text the gRPC status carries.
func (e *Error) Error() string { return "[" + string(e.Code) + "] " + e.Message }

func (e *Error) Unwrap() error { return e.wrapped }

// GRPCStatus makes grpc-go (and status.FromError) send e as its gRPC status.
func (e *Error) GRPCStatus() *status.Status { return status.New(e.Code.GRPCCode(), e.Error()) }

// FromError finds the sluice error in err: an *Error in its chain, or a gRPC
// status whose message starts with "[CODE] " (what a client of a stage
// receives). It reports false for anything else.
func FromError(err error) (*Error, bool) {
	if err == nil {
		return nil, false
	}
	var e *Error
	if errors.As(err, &e) {
		return e, true
	}
	st, ok := status.FromError(err)
	if !ok {
		return nil, false
	}
	msg := st.Message()
	if !strings.HasPrefix(msg, "[") {
		return nil, false
	}
	end := strings.Index(msg, "] ")
	if end < 0 {
		return nil, false
	}
	code := Code(msg[1:end])
	if !code.Valid() {
		return nil, false
	}
	return &Error{Code: code, Message: msg[end+2:]}, true
}
