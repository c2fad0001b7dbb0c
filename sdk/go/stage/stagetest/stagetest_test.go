package stagetest_test

import (
	"encoding/base64"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/flight"
	flightgen "github.com/apache/arrow-go/v18/arrow/flight/gen/flight"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"google.golang.org/grpc"

	"github.com/sluice-etl/sluice/sdk/go/stage"
	"github.com/sluice-etl/sluice/sdk/go/stage/stagetest"
)

var schema = arrow.NewSchema([]arrow.Field{{Name: "id", Type: arrow.PrimitiveTypes.Int64}}, nil)

// scripted is a stage written without the SDK: it answers every exchange
// with its schema, then the given envelopes, metadata only; it also keeps
// the open request it got.
type scripted struct {
	flight.BaseFlightServer
	envelopes []string
	opened    chan []byte
}

func (s *scripted) DoExchange(stream flight.FlightService_DoExchangeServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	s.opened <- first.GetFlightDescriptor().GetCmd()
	p := ipc.GetSchemaPayload(schema, memory.DefaultAllocator)
	defer p.Release()
	meta := p.Meta()
	defer meta.Release()
	if err := stream.Send(&flight.FlightData{DataHeader: meta.Bytes()}); err != nil {
		return err
	}
	for _, e := range s.envelopes {
		if err := stream.Send(&flight.FlightData{AppMetadata: []byte(e)}); err != nil {
			return err
		}
	}
	return nil
}

func serve(t *testing.T, s *scripted) *stagetest.Server {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "fake.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	flightgen.RegisterFlightServiceServer(gs, s)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	return stagetest.Connect(t, sock, memory.DefaultAllocator)
}

// stagetest refuses a snapshot where the engine does, decodes the one of
// "flushed", and writes the one of WithSnapshot into the open request.
func TestSnapshotChecks(t *testing.T) {
	for _, tc := range []struct {
		name      string
		protocol  string
		envelopes []string
		err       string // "" for none
		snapshot  string // decoded, of "flushed"
		has       bool
	}{
		{"flushed", stage.ProtocolV1_1, []string{`{"v":1,"kind":"flushed","epoch":1,"seq":0,"rows":0,"snapshot":"eyJ0b3RhbHMiOnsiMyI6MTIwfX0="}`},
			"", `{"totals":{"3":120}}`, true},
		{"empty", stage.ProtocolV1_1, []string{`{"v":1,"kind":"flushed","epoch":1,"seq":0,"rows":0,"snapshot":""}`}, "", "", true},
		{"none", stage.ProtocolV1_1, []string{`{"v":1,"kind":"flushed","epoch":1,"seq":0,"rows":0}`}, "", "", false},
		{"on an ack", stage.ProtocolV1_1, []string{`{"v":1,"kind":"ack","epoch":1,"seq":0,"in_seq":0,"snapshot":""}`},
			`stagetest: a "ack" message carries a snapshot; only "flushed" may`, "", false},
		{"in v1", stage.ProtocolV1, []string{`{"v":1,"kind":"flushed","epoch":1,"seq":0,"rows":0,"snapshot":""}`},
			`stagetest: "flushed" carries a snapshot in a sluice.stage.v1 exchange`, "", false},
		{"not base64", stage.ProtocolV1_1, []string{`{"v":1,"kind":"flushed","epoch":1,"seq":0,"rows":0,"snapshot":"e30"}`},
			`stagetest: the snapshot of "flushed" is not base64: illegal base64 data at input byte 0`, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &scripted{envelopes: tc.envelopes, opened: make(chan []byte, 1)}
			srv := serve(t, s)
			state := []byte{0, 1, 2, 0xff}
			events, err := srv.Run(t.Context(), stagetest.OpenCmdAs(tc.protocol, "fake", 1, 0, `{"a":1}`, stagetest.WithSnapshot(state)), schema)
			defer stagetest.Release(events)
			want := `{"protocol":"` + tc.protocol + `","stage":"fake","epoch":1,"partition":0,"config":{"a":1},"snapshot":"` +
				base64.StdEncoding.EncodeToString(state) + `"}`
			if got := string(<-s.opened); got != want {
				t.Errorf("open request %s, want %s", got, want)
			}
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, ok := stagetest.FlushedSnapshot(events)
			if ok != tc.has || string(got) != tc.snapshot || ok && got == nil {
				t.Fatalf("FlushedSnapshot = %q (nil %v), %v", got, got == nil, ok)
			}
		})
	}
	if got := string(stagetest.OpenCmd("fake", 1, 0, "", stagetest.WithSnapshot(nil))); strings.Contains(got, "snapshot") {
		t.Fatalf("WithSnapshot(nil) wrote the key: %s", got)
	}
	if got, want := string(stagetest.OpenCmd("fake", 1, 0, "", stagetest.WithSnapshot([]byte{}))), `"config":null,"snapshot":""}`; !strings.HasSuffix(got, want) {
		t.Fatalf("WithSnapshot(empty): %s", got)
	}
}

// stagetest writes "unchanged": true with WithUnchanged, and takes an
// "unchanged" answer only where the engine does: offered in a v1.1
// exchange, naming its input batch, without rows or lineage.
func TestUnchangedChecks(t *testing.T) {
	const ok = `{"v":1,"kind":"unchanged","epoch":1,"seq":0,"in_seq":0}`
	const flushed = `{"v":1,"kind":"flushed","epoch":1,"seq":1,"rows":0}`
	for _, tc := range []struct {
		name     string
		protocol string
		offer    bool
		answer   string
		err      string // "" for none
	}{
		{"offered", stage.ProtocolV1_1, true, ok, ""},
		{"not offered", stage.ProtocolV1_1, false, ok, `stagetest: an "unchanged" answer in a sluice.stage.v1.1 exchange that did not offer them`},
		{"in v1", stage.ProtocolV1, true, ok, `stagetest: an "unchanged" answer in a sluice.stage.v1 exchange that did not offer them`},
		{"without in_seq", stage.ProtocolV1_1, true, `{"v":1,"kind":"unchanged","epoch":1,"seq":0}`, `stagetest: an "unchanged" answer without in_seq`},
		{"with lineage", stage.ProtocolV1_1, true,
			`{"v":1,"kind":"unchanged","epoch":1,"seq":0,"in_seq":0,"lineage":{"stage":"fake","kind":"external","version":"1","language":"go"}}`,
			`stagetest: an "unchanged" answer carries lineage`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &scripted{envelopes: []string{tc.answer, flushed}, opened: make(chan []byte, 1)}
			srv := serve(t, s)
			var opts []stagetest.OpenOption
			if tc.offer {
				opts = append(opts, stagetest.WithUnchanged())
			}
			events, err := srv.Run(t.Context(), stagetest.OpenCmdAs(tc.protocol, "fake", 1, 0, "", opts...), schema)
			defer stagetest.Release(events)
			want := `{"protocol":"` + tc.protocol + `","stage":"fake","epoch":1,"partition":0,"config":null}`
			if tc.offer {
				want = strings.TrimSuffix(want, "}") + `,"unchanged":true}`
			}
			if got := string(<-s.opened); got != want {
				t.Errorf("open request %s, want %s", got, want)
			}
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := stagetest.Kinds(events); got != "unchanged(0) flushed" || events[0].Record != nil || events[0].Envelope.Kind != stagetest.Unchanged {
				t.Fatalf("events %s", got)
			}
		})
	}
}
