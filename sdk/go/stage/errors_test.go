package stage_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
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
		{stage.Late, codes.InvalidArgument, false},
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

// testdata/protocol/error_codes.json is the table of protocol.md section 5,
// shared by the SDKs: the codes (in order), their gRPC status and whether
// the engine retries them must be exactly what it says.
func TestCodeTableMatchesGoldenFile(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	raw, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "..", "testdata", "protocol", "error_codes.json"))
	if err != nil {
		t.Fatal(err)
	}
	var table []struct {
		Code       string `json:"code"`
		GRPC       string `json:"grpc"`
		GRPCNumber uint32 `json:"grpc_number"`
		Retried    *bool  `json:"retried"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&table); err != nil {
		t.Fatal(err)
	}
	var fileCodes []stage.Code
	for _, row := range table {
		fileCodes = append(fileCodes, stage.Code(row.Code))
	}
	if got := stage.Codes(); !slices.Equal(got, fileCodes) {
		t.Fatalf("stage.Codes() = %v\nerror_codes.json has %v", got, fileCodes)
	}
	for _, row := range table {
		c := stage.Code(row.Code)
		// grpc-go reads the canonical upper-case names ("INVALID_ARGUMENT").
		var want codes.Code
		if err := json.Unmarshal([]byte(strconv.Quote(row.GRPC)), &want); err != nil {
			t.Fatalf("%s: gRPC status %q: %v", c, row.GRPC, err)
		}
		if uint32(want) != row.GRPCNumber {
			t.Fatalf("%s: the file says %s is %d, gRPC says %d", c, row.GRPC, row.GRPCNumber, uint32(want))
		}
		if row.Retried == nil {
			t.Fatalf("%s: no \"retried\"", c)
		}
		if !c.Valid() {
			t.Errorf("%s: not Valid", c)
		}
		if got := c.GRPCCode(); got != want {
			t.Errorf("%s: GRPCCode() = %v, the table says %s", c, got, row.GRPC)
		}
		if c.Retryable() != *row.Retried {
			t.Errorf("%s: Retryable() = %v, the table says %v", c, c.Retryable(), *row.Retried)
		}

		// The round trip through a gRPC status: what the engine receives.
		err := stage.Fatal(c, "row %d: %s", 7, "x] [y")
		st, ok := status.FromError(err)
		if !ok || st.Code() != want || st.Message() != "["+row.Code+"] row 7: x] [y" {
			t.Errorf("%s: status %v", c, st)
			continue
		}
		wire := status.ErrorProto(st.Proto()) // as it arrives: a plain status, no *stage.Error
		back, ok := stage.FromError(wire)
		if !ok || back.Code != c || back.Message != "row 7: x] [y" || status.Code(back.GRPCStatus().Err()) != want {
			t.Errorf("%s: back from the wire: %+v, %v", c, back, ok)
		}
	}
}
