package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/sluice-etl/sluice/sdk/go/examples/internal/lines"
	"github.com/sluice-etl/sluice/sdk/go/stage"
)

// service answers each key with key × 10, counting requests and the
// largest number in flight at once; or with broken answers.
type service struct {
	requests, inFlight, most atomic.Int64
	broken                   string // "status", "count" or "" (a good answer)
}

func (s *service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	n := s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	for m := s.most.Load(); n > m && !s.most.CompareAndSwap(m, n); m = s.most.Load() {
	}
	var req struct{ Keys []int64 }
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	scores := make([]int32, len(req.Keys))
	for i, k := range req.Keys {
		scores[i] = int32(k * 10)
	}
	switch s.broken {
	case "status":
		http.Error(w, "overloaded", http.StatusServiceUnavailable)
		return
	case "count":
		scores = scores[1:]
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"scores": scores})
}

func run(t *testing.T, svc *service, config string, keys int) ([]int32, error) {
	t.Helper()
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	defer mem.AssertSize(t, 0)
	srv := httptest.NewServer(svc)
	defer srv.Close()
	cfg := strings.ReplaceAll(config, "URL", srv.URL)
	p, err := score{}.Open(t.Context(), stage.OpenRequest{Stage: "score", Config: []byte(cfg), Allocator: mem})
	if err != nil {
		t.Fatal(err)
	}
	rows := make([]lines.Row, keys)
	for i := range rows {
		rows[i] = lines.Row{OrderKey: int64(i), ShipMode: "AIR"}
	}
	in := lines.Build(mem, rows...)
	defer in.Release()
	out, errs, err := p.Process(t.Context(), in)
	if err != nil {
		return nil, err
	}
	defer out.Release()
	if errs != nil || !out.Schema().Equal(outputSchema) {
		t.Fatalf("errs %v schema %s", errs, out.Schema())
	}
	for c := range lines.Fields {
		if !array.Equal(out.Column(c), in.Column(c)) {
			t.Errorf("column %s changed", lines.Fields[c].Name)
		}
	}
	return append([]int32(nil), out.Column(len(lines.Fields)).(*array.Int32).Int32Values()...), nil
}

func TestChunksKeepRowOrderAndConcurrency(t *testing.T) {
	svc := &service{}
	risk, err := run(t, svc, `{"url":"URL","chunk_rows":3,"concurrency":2}`, 100)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range risk {
		if r != int32(i*10) {
			t.Fatalf("row %d: risk %d", i, r)
		}
	}
	if n := svc.requests.Load(); n != 34 {
		t.Errorf("%d requests for 100 keys in chunks of 3", n)
	}
	if m := svc.most.Load(); m > 2 {
		t.Errorf("%d requests in flight, concurrency is 2", m)
	}
}

func TestBrokenAnswersFailTheBatchNamingTheService(t *testing.T) {
	for _, broken := range []string{"status", "count"} {
		_, err := run(t, &service{broken: broken}, `{"url":"URL"}`, 10)
		e, ok := stage.FromError(err)
		if !ok || e.Code != stage.Unavailable || !strings.Contains(e.Message, "score service http://127.0.0.1:") {
			t.Errorf("%s: %v", broken, err)
		}
	}
}

func TestConfig(t *testing.T) {
	for _, c := range []string{`{}`, `{"url":"http://x","chunk_rows":0}`, `{"url":"http://x","concurrency":-1}`, `{"url":"http://x","typo":1}`} {
		_, err := score{}.Open(t.Context(), stage.OpenRequest{Stage: "score", Config: []byte(c)})
		if e, ok := stage.FromError(err); !ok || e.Code != stage.InvalidArgument {
			t.Errorf("%s: %v", c, err)
		}
	}
}
