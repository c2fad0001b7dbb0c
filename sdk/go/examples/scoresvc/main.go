// Command scoresvc is the HTTP service the "score" example stages call
// (examples/stages/README.md): the stand-in for a remote model or lookup
// API, with a fixed latency, on loopback.
//
//	POST /score  {"keys":[1,2,3]}  →  {"scores":[41,82,23]}   (after -latency)
//
// A key's score is ((key × 2654435761) mod 2^32) mod 100, in wrapping
// unsigned 64-bit arithmetic, so a test can check every row. It prints
// "listening on http://<addr>" once it serves.
//
//	scoresvc -addr 127.0.0.1:0 -latency 5ms
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"time"
)

// Score is the service's answer for key.
func Score(key int64) int32 {
	return int32((uint64(key) * 2654435761) % (1 << 32) % 100)
}

type request struct {
	Keys []int64 `json:"keys"`
}

type response struct {
	Scores []int32 `json:"scores"`
}

func handler(latency time.Duration) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /score", func(w http.ResponseWriter, r *http.Request) {
		var req request
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<20)).Decode(&req); err != nil {
			http.Error(w, "body: "+err.Error(), http.StatusBadRequest)
			return
		}
		select {
		case <-time.After(latency):
		case <-r.Context().Done():
			return
		}
		resp := response{Scores: make([]int32, len(req.Keys))}
		for i, k := range req.Keys {
			resp.Scores[i] = Score(k)
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(resp)
	})
	return mux
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "address to listen on")
	latency := flag.Duration("latency", 5*time.Millisecond, "time every request takes")
	flag.Parse()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "scoresvc:", err)
		os.Exit(1)
	}
	fmt.Printf("listening on http://%s\n", ln.Addr())
	log.Fatal(http.Serve(ln, handler(*latency)))
}
