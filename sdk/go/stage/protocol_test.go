package stage_test

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"google.golang.org/grpc/codes"

	"github.com/sluice-etl/sluice/sdk/go/stage"
	"github.com/sluice-etl/sluice/sdk/go/stage/stagetest"
)

// v11Stage has what only a v1.1 manifest carries.
func v11Stage() *testStage {
	st := processing("typed", func(context.Context, arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
		return nil, nil, nil
	})
	st.manifest.PlainTypes = true
	st.manifest.Timing = &stage.Timing{BatchP99: 50 * time.Millisecond, MaxAnswer: 2 * time.Second}
	return st
}

func keysOf(t *testing.T, body []byte) []string {
	t.Helper()
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for k := range raw {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func TestDescribeToAV11Engine(t *testing.T) {
	srv, _ := start(t, v11Stage())
	m, body, err := srv.Describe(t.Context()) // {"protocols":["sluice.stage.v1.1","sluice.stage.v1"]}
	if err != nil {
		t.Fatal(err)
	}
	if m.Protocol != stage.ProtocolV1_1 || !m.PlainTypes || m.Timing == nil || !m.SharedMemory ||
		*m.Timing != (stage.Timing{BatchP99: 50 * time.Millisecond, MaxAnswer: 2 * time.Second}) {
		t.Fatalf("manifest %+v (timing %+v)", m, m.Timing)
	}
	if !strings.Contains(string(body), `"protocol":"sluice.stage.v1.1",`) ||
		!strings.HasSuffix(string(body), `"errors":"row","plain_types":true,"timing":{"batch_p99_ms":50,"max_answer_ms":2000},"shared_memory":true}`) {
		t.Fatalf("describe: %s", body)
	}
}

func TestDescribeToAV1Engine(t *testing.T) {
	srv, _ := start(t, v11Stage())
	for name, describe := range map[string]func(context.Context) (stage.Manifest, []byte, error){
		"empty body": srv.DescribeV1,
		"v1 listed": func(ctx context.Context) (stage.Manifest, []byte, error) {
			return srv.DescribeAs(ctx, stage.ProtocolV1)
		},
	} {
		m, body, err := describe(t.Context())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if m.Protocol != stage.ProtocolV1 || m.PlainTypes || m.Timing != nil {
			t.Fatalf("%s: manifest %+v", name, m)
		}
		want := []string{"errors", "input_schema", "language", "max_batch_bytes", "max_batch_rows", "name",
			"ordering", "output_schema", "protocol", "stateful", "version"}
		if got := keysOf(t, body); !slices.Equal(got, want) {
			t.Fatalf("%s: keys %v, want the v1 keys %v: %s", name, got, want, body)
		}
		if !strings.Contains(string(body), `"protocol":"sluice.stage.v1",`) {
			t.Fatalf("%s: describe %s", name, body)
		}
	}
}

// The answer is the newest version both speak, whatever the order of the
// engine's list and whatever else it lists.
func TestDescribePicksTheNewestCommonVersion(t *testing.T) {
	srv, _ := start(t, v11Stage())
	for _, tc := range []struct {
		engine []string
		want   string
	}{
		{[]string{stage.ProtocolV1_1}, stage.ProtocolV1_1},
		{[]string{stage.ProtocolV1, stage.ProtocolV1_1}, stage.ProtocolV1_1},
		{[]string{"sluice.stage.v2", stage.ProtocolV1_1, stage.ProtocolV1}, stage.ProtocolV1_1},
		{[]string{"sluice.stage.v2", stage.ProtocolV1}, stage.ProtocolV1},
	} {
		m, _, err := srv.DescribeAs(t.Context(), tc.engine...)
		if err != nil || m.Protocol != tc.want {
			t.Errorf("engine %v: protocol %q, %v; want %q", tc.engine, m.Protocol, err, tc.want)
		}
	}
}

func TestDescribeWithoutACommonVersion(t *testing.T) {
	srv, _ := start(t, v11Stage())
	_, _, err := srv.DescribeAs(t.Context(), "sluice.stage.v2", "sluice.stage.v3")
	wantStatus(t, err, codes.InvalidArgument,
		"[INVALID_ARGUMENT] the engine speaks sluice.stage.v2, sluice.stage.v3; this stage speaks sluice.stage.v1.1, sluice.stage.v1")
}

func TestDescribeRequestThatIsNotTheJSON(t *testing.T) {
	srv, _ := start(t, v11Stage())
	for _, body := range []string{`not json`, `{"protocols":"sluice.stage.v1"}`, `{"protocols":[1]}`, `{}`,
		`{"protocols":[]}`, `{"protocols":null}`, `["sluice.stage.v1"]`, `null`,
		`{"protocols":["sluice.stage.v1"]} {}`} {
		_, err := srv.ActionWithBody(t.Context(), stage.ActionDescribe, []byte(body))
		if e, ok := stage.FromError(err); !ok || e.Code != stage.InvalidArgument || !strings.HasPrefix(e.Message, "describe request: ") {
			t.Errorf("body %s: %v", body, err)
		}
	}
}

// A newer engine may add keys to the describe request: they are ignored.
func TestDescribeRequestWithUnknownKeys(t *testing.T) {
	srv, _ := start(t, v11Stage())
	body, err := srv.ActionWithBody(t.Context(), stage.ActionDescribe, []byte(`{"protocols":["sluice.stage.v1"],"shm":true}`))
	if err != nil || !strings.Contains(string(body), `"protocol":"sluice.stage.v1"`) {
		t.Fatalf("describe: %s, %v", body, err)
	}
}

// A stage whose manifest says ProtocolV1 speaks only v1.
func TestStageRestrictedToV1(t *testing.T) {
	st := processing("old", func(context.Context, arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
		return nil, nil, nil
	})
	st.manifest.Protocol = stage.ProtocolV1
	srv, _ := start(t, st)
	if m, _, err := srv.Describe(t.Context()); err != nil || m.Protocol != stage.ProtocolV1 {
		t.Fatalf("describe: %+v, %v", m, err)
	}
	_, _, err := srv.DescribeAs(t.Context(), stage.ProtocolV1_1)
	wantStatus(t, err, codes.InvalidArgument,
		"[INVALID_ARGUMENT] the engine speaks sluice.stage.v1.1; this stage speaks sluice.stage.v1")
	_, err = srv.Run(t.Context(), stagetest.OpenCmdAs(stage.ProtocolV1_1, "old", 1, 0, ""), people)
	wantStatus(t, err, codes.InvalidArgument,
		"[INVALID_ARGUMENT] the engine opened the exchange in sluice.stage.v1.1; this stage speaks sluice.stage.v1")
	if _, err := srv.Run(t.Context(), stagetest.OpenCmdAs(stage.ProtocolV1, "old", 1, 0, ""), people); err != nil {
		t.Fatal(err)
	}
}

// An exchange opens with either version; Open sees which.
func TestOpenWithEitherVersion(t *testing.T) {
	opened := make(chan string, 1)
	st := v11Stage()
	st.open = func(_ context.Context, req stage.OpenRequest) (stage.Processor, error) {
		opened <- req.Protocol
		return stage.ProcessorFunc(func(context.Context, arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
			return nil, nil, nil
		}), nil
	}
	srv, mem := start(t, st)
	in := peopleBatch(mem, 0, 4)
	defer in.Release()
	for _, v := range stage.Protocols() {
		events, err := srv.Run(t.Context(), stagetest.OpenCmdAs(v, "typed", 3, 0, ""), people, in)
		stagetest.Release(events)
		if err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		if got := stagetest.Kinds(events); got != "ack(0) flushed" {
			t.Fatalf("%s: %s", v, got)
		}
		if got := <-opened; got != v {
			t.Fatalf("Open saw protocol %q, want %q", got, v)
		}
	}
	_, err := srv.Run(t.Context(), stagetest.OpenCmdAs("sluice.stage.v2", "typed", 3, 0, ""), people)
	wantStatus(t, err, codes.InvalidArgument,
		"[INVALID_ARGUMENT] the engine opened the exchange in sluice.stage.v2; this stage speaks sluice.stage.v1.1, sluice.stage.v1")
}

func TestTimingJSON(t *testing.T) {
	for _, tc := range []struct {
		in   stage.Timing
		want string
	}{
		{stage.Timing{BatchP99: 50 * time.Millisecond, MaxAnswer: 2 * time.Second}, `{"batch_p99_ms":50,"max_answer_ms":2000}`},
		// a promise is rounded up, never made tighter than stated
		{stage.Timing{BatchP99: 1500 * time.Microsecond, MaxAnswer: time.Millisecond + 1}, `{"batch_p99_ms":2,"max_answer_ms":2}`},
	} {
		b, err := json.Marshal(tc.in)
		if err != nil || string(b) != tc.want {
			t.Errorf("%+v: %s, %v; want %s", tc.in, b, err, tc.want)
		}
	}
	var back stage.Timing
	if err := json.Unmarshal([]byte(`{"batch_p99_ms":7,"max_answer_ms":9}`), &back); err != nil ||
		back != (stage.Timing{BatchP99: 7 * time.Millisecond, MaxAnswer: 9 * time.Millisecond}) {
		t.Fatalf("%+v, %v", back, err)
	}
	for _, bad := range []string{`{"batch_p99_ms":7}`, `{"batch_p99_ms":0,"max_answer_ms":9}`, `{"batch_p99_ms":-1,"max_answer_ms":9}`,
		`{"batch_p99_ms":1.5,"max_answer_ms":9}`, `{"batch_p99_ms":"7","max_answer_ms":9}`, `7`,
		`{"batch_p99_ms":7,"max_answer_ms":9,"p50_ms":1}`} {
		if err := json.Unmarshal([]byte(bad), &back); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestInvalidV11Manifests(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		name string
		edit func(*stage.Manifest)
		want string
	}{
		{"plain types in v1", func(m *stage.Manifest) { m.Protocol, m.PlainTypes = stage.ProtocolV1, true },
			"plain_types needs protocol sluice.stage.v1.1"},
		{"timing in v1", func(m *stage.Manifest) {
			m.Protocol, m.Timing = stage.ProtocolV1, &stage.Timing{BatchP99: ms, MaxAnswer: ms}
		},
			"timing needs protocol sluice.stage.v1.1"},
		{"zero timing", func(m *stage.Manifest) { m.Timing = &stage.Timing{MaxAnswer: ms} }, "must both be at least 1ms"},
		{"sub-millisecond timing", func(m *stage.Manifest) { m.Timing = &stage.Timing{BatchP99: ms / 2, MaxAnswer: ms} }, "must both be at least 1ms"},
		{"p99 above max", func(m *stage.Manifest) { m.Timing = &stage.Timing{BatchP99: 2 * ms, MaxAnswer: ms} }, "is more than the max answer"},
		{"unknown protocol", func(m *stage.Manifest) { m.Protocol = "sluice.stage.v1.2" },
			`protocol "sluice.stage.v1.2": this SDK speaks sluice.stage.v1.1, sluice.stage.v1`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := manifest("x")
			tc.edit(&m)
			_, err := stage.NewServer(&testStage{manifest: m})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}
