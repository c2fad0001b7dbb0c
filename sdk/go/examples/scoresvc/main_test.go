package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestScore(t *testing.T) {
	// ((key × 2654435761) mod 2^32) mod 100, wrapping for negative keys
	// (the values computed with Python integers)
	for key, want := range map[int64]int32{0: 0, 1: 61, 2: 26, 1000000: 32, -1: 35} {
		if got := Score(key); got != want {
			t.Errorf("Score(%d) = %d, want %d", key, got, want)
		}
	}
}

func TestHandler(t *testing.T) {
	srv := httptest.NewServer(handler(time.Millisecond))
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/score", "application/json", strings.NewReader(`{"keys":[1,2,1]}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out response
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 200 {
		t.Fatal(resp.Status, err)
	}
	if len(out.Scores) != 3 || out.Scores[0] != Score(1) || out.Scores[1] != Score(2) || out.Scores[2] != Score(1) {
		t.Errorf("scores %v", out.Scores)
	}
	for _, body := range []string{`{"keys":["a"]}`, `not json`} {
		resp, err := http.Post(srv.URL+"/score", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: %s", body, resp.Status)
		}
	}
}
