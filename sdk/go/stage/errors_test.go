package stage_test

import (
	"errors"
	"fmt"
	"io"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluice-etl/sluice/sdk/go/stage"
)

// The table of protocol.md section 5.
func TestCodeTable(t *testing.T) {
	for _, tc := range []struct {
		code      stage.Code
		grpc      codes.Code
		retryable bool
	}{
		{stage.Malformed, codes.InvalidArgument, false},
		{stage.TypeMismatch, codes.InvalidArgument, false},
		{stage.ConstraintViolation, codes.InvalidArgument, false},
		{stage.Rejected, codes.InvalidArgument, false},
		{stage.SchemaMismatch, codes.InvalidArgument, false},
		{stage.InvalidArgument, codes.InvalidArgument, false},
		{stage.Timeout, codes.DeadlineExceeded, true},
		{stage.Unavailable, codes.Unavailable, true},
		{stage.Internal, codes.Internal, false},
	} {
		if !tc.code.Valid() || tc.code.GRPCCode() != tc.grpc || tc.code.Retryable() != tc.retryable {
			t.Errorf("%s: valid %v, gRPC %v, retryable %v", tc.code, tc.code.Valid(), tc.code.GRPCCode(), tc.code.Retryable())
		}
		st := status.Convert(stage.Fatal(tc.code, "boom %d", 1))
		if st.Code() != tc.grpc || st.Message() != "["+string(tc.code)+"] boom 1" {
			t.Errorf("%s: status %v", tc.code, st)
		}
	}
	if stage.Code("NOPE").Valid() || stage.Code("NOPE").GRPCCode() != codes.Internal {
		t.Error("unknown code")
	}
}

func TestFatalWraps(t *testing.T) {
	err := stage.Fatal(stage.Unavailable, "lookup: %w", io.ErrUnexpectedEOF)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatal("Fatal does not wrap %w")
	}
	wrapped := fmt.Errorf("open: %w", err)
	if e, ok := stage.FromError(wrapped); !ok || e.Code != stage.Unavailable || e.Message != "lookup: unexpected EOF" {
		t.Fatalf("FromError(wrapped) = %+v, %v", e, ok)
	}
	if st := status.Convert(wrapped); st.Code() != codes.Unavailable {
		t.Fatalf("gRPC sees %v", st.Code())
	}
}

func TestFromError(t *testing.T) {
	for _, tc := range []struct {
		err  error
		ok   bool
		code stage.Code
		msg  string
	}{
		{nil, false, "", ""},
		{errors.New("plain"), false, "", ""},
		{status.Error(codes.Canceled, "context canceled"), false, "", ""},
		{status.Error(codes.InvalidArgument, "[NOT_A_CODE] x"), false, "", ""},
		{status.Error(codes.InvalidArgument, "[REJECTED] no] way"), true, stage.Rejected, "no] way"},
		{status.Error(codes.Internal, "[INTERNAL] "), true, stage.Internal, ""},
	} {
		e, ok := stage.FromError(tc.err)
		if ok != tc.ok || (ok && (e.Code != tc.code || e.Message != tc.msg)) {
			t.Errorf("FromError(%v) = %+v, %v", tc.err, e, ok)
		}
	}
}
