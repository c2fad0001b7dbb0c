// Command score is the "score" example stage (examples/stages/README.md): an
// I/O-bound stage that adds a risk score per row, asked from an HTTP service
// (scoresvc) in chunks of chunk_rows keys, concurrency requests at a time.
//
// Output: the input columns, then risk (Int32). A request that fails fails
// the batch (the engine restarts or fails the stage, as configured). Its Rust
// twin is crates/sluice-flight/examples/score.rs; docs/stages.md ("Go or
// Rust?") measures the two.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/sluice-etl/sluice/sdk/go/examples/internal/lines"
	"github.com/sluice-etl/sluice/sdk/go/stage"
)

var outputSchema = arrow.NewSchema(append(slices.Clone(lines.Fields),
	arrow.Field{Name: "risk", Type: arrow.PrimitiveTypes.Int32},
), nil)

// config is the stage's config table in the pipeline file.
type config struct {
	URL         string `json:"url"`
	ChunkRows   int    `json:"chunk_rows"`
	Concurrency int    `json:"concurrency"`
	TimeoutMS   int    `json:"timeout_ms"`
}

type score struct{ stage.Base }

func (score) Manifest() stage.Manifest {
	return stage.Manifest{
		Name:         "score",
		Version:      "1.0.0",
		InputSchema:  lines.Ref,
		OutputSchema: &stage.SchemaRef{Name: "scored_lines", Version: "1", Schema: outputSchema},
		Stateful:     false,
		Ordering:     stage.OrderingPreserve,
		Errors:       stage.ErrorsFatalOnly,
	}
}

func (score) Open(_ context.Context, req stage.OpenRequest) (stage.Processor, error) {
	cfg := config{ChunkRows: 1024, Concurrency: 8, TimeoutMS: 10000}
	if err := req.DecodeConfig(&cfg); err != nil {
		return nil, err
	}
	if cfg.URL == "" || cfg.ChunkRows < 1 || cfg.Concurrency < 1 || cfg.TimeoutMS < 1 {
		return nil, stage.Fatal(stage.InvalidArgument,
			"config of stage %q: url is required; chunk_rows, concurrency and timeout_ms must be at least 1", req.Stage)
	}
	client := &http.Client{
		Timeout: time.Duration(cfg.TimeoutMS) * time.Millisecond,
		// keep a connection per request in flight: the default of 2 idle
		// connections per host would open new ones all the time
		Transport: &http.Transport{MaxIdleConnsPerHost: cfg.Concurrency},
	}
	s := &scorer{cfg: cfg, client: client, mem: req.Allocator}
	return stage.ProcessorFunc(s.process), nil
}

type scorer struct {
	cfg    config
	client *http.Client
	mem    memory.Allocator
}

func (s *scorer) process(ctx context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
	keys := rec.Column(lines.OrderKey).(*array.Int64).Int64Values()
	risk := make([]int32, len(keys))
	// one goroutine per chunk, at most Concurrency of them asking at once
	slots := make(chan struct{}, s.cfg.Concurrency)
	errs := make(chan error, (len(keys)+s.cfg.ChunkRows-1)/s.cfg.ChunkRows)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	chunks := 0
	for start := 0; start < len(keys); start += s.cfg.ChunkRows {
		end := min(start+s.cfg.ChunkRows, len(keys))
		chunks++
		go func() {
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				errs <- ctx.Err()
				return
			}
			defer func() { <-slots }()
			errs <- s.ask(ctx, keys[start:end], risk[start:end])
		}()
	}
	for range chunks {
		if err := <-errs; err != nil {
			cancel()
			return nil, nil, stage.Fatal(stage.Unavailable, "score service %s: %v", s.cfg.URL, err)
		}
	}
	b := array.NewInt32Builder(s.mem)
	defer b.Release()
	b.AppendValues(risk, nil)
	col := b.NewArray()
	defer col.Release()
	return array.NewRecordBatch(outputSchema, append(slices.Clone(rec.Columns()), col), rec.NumRows()), nil, nil
}

// ask fills scores with the service's answer for keys.
func (s *scorer) ask(ctx context.Context, keys []int64, scores []int32) error {
	body, err := json.Marshal(struct {
		Keys []int64 `json:"keys"`
	}{keys})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.cfg.URL+"/score", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("HTTP %s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	var out struct {
		Scores []int32 `json:"scores"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return fmt.Errorf("answer: %v", err)
	}
	if len(out.Scores) != len(keys) {
		return fmt.Errorf("answer has %d scores for %d keys", len(out.Scores), len(keys))
	}
	copy(scores, out.Scores)
	return nil
}

func main() {
	if err := stage.Serve(context.Background(), score{}); err != nil {
		fmt.Fprintln(os.Stderr, "score:", err)
		os.Exit(1)
	}
}
