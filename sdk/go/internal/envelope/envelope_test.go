package envelope

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// goldenPath locates testdata/protocol/envelopes.jsonl from this file: the
// repository layout is fixed (sdk/go/internal/envelope → repository root).
func goldenPath(t *testing.T) string { return protocolTestdata(t, "envelopes.jsonl") }

// protocolTestdata locates a file of testdata/protocol.
func protocolTestdata(t *testing.T, name string) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok || !filepath.IsAbs(file) { // -trimpath: fall back to the package directory
		file = filepath.Join(".", "envelope_test.go")
	}
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "..", "testdata", "protocol", name)
}

func TestGoldenVectors(t *testing.T) {
	f, err := os.Open(goldenPath(t))
	if err != nil {
		t.Fatalf("golden vectors: %v", err)
	}
	defer f.Close()

	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 {
			continue
		}
		n++
		env, err := Decode(line)
		if err != nil {
			t.Errorf("line %d: decode: %v\n%s", n, err, line)
			continue
		}
		if got := Encode(&env); !bytes.Equal(got, line) {
			t.Errorf("line %d: re-encoding differs\n got: %s\nwant: %s", n, got, line)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if n < 12 {
		t.Fatalf("read %d vectors, want at least 12", n)
	}
}

// envelopes_decode.jsonl: each line is [input, canonical]. The input spells
// an envelope the non-canonical ways other encoders do (encoding/json's
// \u2028 and \u003c, ASCII-only with surrogate pairs, whitespace, upper-case
// hex, \/, another key order); decoding it and encoding again must give the
// canonical bytes exactly.
func TestDecodeVectors(t *testing.T) {
	f, err := os.Open(protocolTestdata(t, "envelopes_decode.jsonl"))
	if err != nil {
		t.Fatalf("decode vectors: %v", err)
	}
	defer f.Close()

	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 {
			continue
		}
		n++
		var pair []string
		if err := json.Unmarshal(line, &pair); err != nil || len(pair) != 2 {
			t.Fatalf("line %d: not a JSON array [input, canonical] (%v): %s", n, err, line)
		}
		input, canonical := pair[0], pair[1]
		if input == canonical {
			t.Errorf("line %d: the input is already canonical; the vector tests nothing", n)
		}
		env, err := Decode([]byte(input))
		if err != nil {
			t.Errorf("line %d: decode: %v\n%s", n, err, input)
			continue
		}
		if got := Encode(&env); string(got) != canonical {
			t.Errorf("line %d: re-encoding differs\n got: %s\nwant: %s", n, got, canonical)
		}
		// the canonical form is a fixed point
		again, err := Decode([]byte(canonical))
		if err != nil {
			t.Errorf("line %d: decode canonical: %v", n, err)
		} else if got := Encode(&again); string(got) != canonical {
			t.Errorf("line %d: canonical form not stable\n got: %s\nwant: %s", n, got, canonical)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if n < 5 {
		t.Fatalf("read %d vectors, want at least 5", n)
	}
}

// The golden file covers these on purpose; check the decoded values too, not
// only the bytes.
func TestExactIntegers(t *testing.T) {
	env, err := Decode([]byte(`{"v":1,"kind":"batch","epoch":18446744073709551615,"seq":9007199254740993,"in_seq":0}`))
	if err != nil {
		t.Fatal(err)
	}
	if env.Epoch != 18446744073709551615 || env.Seq != 9007199254740993 {
		t.Fatalf("epoch %d seq %d", env.Epoch, env.Seq)
	}
	if env.InSeq == nil || *env.InSeq != 0 {
		t.Fatalf("in_seq = %v, want present 0", env.InSeq)
	}
	flushed := Envelope{V: 1, Kind: Flushed, Epoch: 3, Seq: 0, Rows: Uint64(0)}
	if got, want := string(Encode(&flushed)), `{"v":1,"kind":"flushed","epoch":3,"seq":0,"rows":0}`; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

// The snapshot of a stateful v1.1 stage (protocol.md section 4): the last
// key, on "flushed"; kept as the base64 text of the wire; "" (an empty
// state) is present, null and absence are the same.
func TestSnapshot(t *testing.T) {
	const line = `{"v":1,"kind":"flushed","epoch":12,"seq":7,"rows":3,"snapshot":"eyJ0b3RhbHMiOnsiMyI6MTIwfX0="}`
	env, err := Decode([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if env.Snapshot == nil || *env.Snapshot != "eyJ0b3RhbHMiOnsiMyI6MTIwfX0=" || env.Rows == nil || *env.Rows != 3 {
		t.Fatalf("decoded %+v", env)
	}
	built := Envelope{V: 1, Kind: Flushed, Epoch: 12, Seq: 7, Rows: Uint64(3), Snapshot: String("eyJ0b3RhbHMiOnsiMyI6MTIwfX0=")}
	if got := string(Encode(&built)); got != line {
		t.Fatalf("got  %s\nwant %s", got, line)
	}
	empty := Envelope{V: 1, Kind: Flushed, Epoch: 1, Seq: 0, Rows: Uint64(0), Snapshot: String("")}
	if got, want := string(Encode(&empty)), `{"v":1,"kind":"flushed","epoch":1,"seq":0,"rows":0,"snapshot":""}`; got != want {
		t.Fatalf("empty state: got %s, want %s", got, want)
	}
	for _, in := range []string{
		`{"v":1,"kind":"flushed","epoch":1,"seq":0,"rows":0}`,
		`{"v":1,"kind":"flushed","epoch":1,"seq":0,"rows":0,"snapshot":null}`,
	} {
		env, err := Decode([]byte(in))
		if err != nil || env.Snapshot != nil {
			t.Fatalf("%s: snapshot %v, %v; want absent", in, env.Snapshot, err)
		}
		if got, want := string(Encode(&env)), `{"v":1,"kind":"flushed","epoch":1,"seq":0,"rows":0}`; got != want {
			t.Fatalf("%s: re-encoded %s", in, got)
		}
	}
	// another spelling of the same string, in another key order
	env, err = Decode([]byte(`{"snapshot":"eyJ0b3RhbHMiOnsiMyI6MTIwfX0\u003d","rows":3,"seq":7,"epoch":12,"kind":"flushed","v":1}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(Encode(&env)); got != line {
		t.Fatalf("got  %s\nwant %s", got, line)
	}
	if _, err := Decode([]byte(`{"v":1,"kind":"flushed","epoch":1,"seq":0,"rows":0,"snapshot":5}`)); err == nil {
		t.Fatal("a snapshot that is not a string was accepted")
	}
}

// "unchanged" (v1.1): the golden vector decodes to its fields and a built
// envelope encodes to it; like an "ack" it carries in_seq and nothing else
// (that in_seq is there is the reader's check, as for an "ack").
func TestUnchanged(t *testing.T) {
	const line = `{"v":1,"kind":"unchanged","epoch":7,"seq":2,"in_seq":0}`
	golden, err := os.ReadFile(goldenPath(t))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(golden, []byte(line+"\n")) {
		t.Fatalf("%s is not a golden vector", line)
	}
	env, err := Decode([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if env.Kind != Unchanged || env.Epoch != 7 || env.Seq != 2 || env.InSeq == nil || *env.InSeq != 0 ||
		env.Shm != nil || env.Lineage != nil || env.Rows != nil {
		t.Fatalf("decoded %+v", env)
	}
	built := Envelope{V: Version, Kind: Unchanged, Epoch: 7, Seq: 2, InSeq: Uint64(0)}
	if got := string(Encode(&built)); got != line {
		t.Fatalf("got  %s\nwant %s", got, line)
	}
	// another spelling and key order, an unknown key: the same canonical bytes
	env, err = Decode([]byte(`{ "in_seq": 0, "seq": 2, "epoch": 7, "kind": "un\u0063hanged", "v": 1, "later": [1] }`))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(Encode(&env)); got != line {
		t.Fatalf("got  %s\nwant %s", got, line)
	}
	_, err = Decode([]byte(`{"v":1,"kind":"unchanged","epoch":7,"seq":2,"in_seq":0,"shm":{"offset":0,"length":64}}`))
	if err == nil || !strings.Contains(err.Error(), `a "unchanged" names a slot of shared memory`) {
		t.Fatalf("an unchanged naming a slot: %v", err)
	}
}

// AppendString must agree with encoding/json (HTML escaping off) on every
// string except U+2028/U+2029, which encoding/json always escapes and
// serde_json never does, and invalid UTF-8.
func TestMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{
		"", "plain", `q"uote`, `back\slash`, "<a & b>", "\b\f\n\r\t", "\x00\x01\x1f\x7f",
		"été ünïcødé 日本 🦀", "ship mode \"\" is empty <none> & été",
	} {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(s); err != nil {
			t.Fatal(err)
		}
		want := strings.TrimSuffix(buf.String(), "\n")
		if got := string(AppendString(nil, s)); got != want {
			t.Errorf("%q: got %s, want %s", s, got, want)
		}
	}
	if got, want := string(AppendString(nil, "a\u2028b\u2029c")), "\"a\u2028b\u2029c\""; got != want {
		t.Errorf("U+2028/2029: got %q, want %q (as is, like serde_json)", got, want)
	}
	if got, want := string(AppendString(nil, "a\xffb")), "\"a\uFFFDb\""; got != want {
		t.Errorf("invalid UTF-8: got %q, want %q", got, want)
	}
}

func TestDecodeRejects(t *testing.T) {
	for _, in := range []string{
		``,
		`not json`,
		`{"kind":"batch","epoch":1,"seq":0}`,
		`{"v":2,"kind":"batch","epoch":1,"seq":0}`,
		`{"v":1,"epoch":1,"seq":0}`,
		`{"v":1,"kind":"nope","epoch":1,"seq":0}`,
		`{"v":1,"kind":"batch","seq":0}`,
		`{"v":1,"kind":"batch","epoch":1}`,
		`{"v":1,"kind":"batch","epoch":-1,"seq":0}`,
		`{"v":1,"kind":"batch","epoch":1.5,"seq":0}`,
		`{"v":1,"kind":"batch","epoch":18446744073709551616,"seq":0}`,
		// a slot of shared memory must name both its offset and its length,
		// as unsigned 64-bit integers
		`{"v":1,"kind":"batch","epoch":1,"seq":0,"shm":{"offset":64}}`,
		`{"v":1,"kind":"batch","epoch":1,"seq":0,"shm":{"length":64}}`,
		`{"v":1,"kind":"batch","epoch":1,"seq":0,"shm":[]}`,
		`{"v":1,"kind":"batch","epoch":1,"seq":0,"shm":{"offset":-64,"length":64}}`,
		`{"v":1,"kind":"batch","epoch":1,"seq":0,"shm":{"offset":64,"length":18446744073709551616}}`,
		`{"v":1,"kind":"release","epoch":1,"seq":0,"shm":{"offset":6.4,"length":64}}`,
		// only a batch or a release names a slot, and a release must
		`{"v":1,"kind":"release","epoch":1,"seq":0}`,
		`{"v":1,"kind":"end","epoch":1,"seq":0,"shm":{"offset":64,"length":64}}`,
		`{"v":1,"kind":"ack","epoch":1,"seq":0,"in_seq":0,"shm":{"offset":64,"length":64}}`,
		// an "unchanged" answers with the engine's own batch: it has no slot
		`{"v":1,"kind":"unchanged","epoch":1,"seq":0,"in_seq":0,"shm":{"offset":64,"length":64}}`,
		`{"v":1,"kind":"Unchanged","epoch":1,"seq":0,"in_seq":0}`,
	} {
		if _, err := Decode([]byte(in)); err == nil {
			t.Errorf("Decode(%q) succeeded, want an error", in)
		}
	}
}

func FuzzRoundTrip(f *testing.F) {
	f.Add(uint64(12), uint64(3), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "quantity 47 exceeds 45", int64(7))
	f.Add(^uint64(0), uint64(1)<<53+1, "", "a\u2028b \"<&>\" \x01", int64(0))
	f.Add(uint64(7), uint64(2), "", "", int64(3))
	f.Fuzz(func(t *testing.T, epoch, seq uint64, trace, msg string, row int64) {
		if !utf8Valid(trace) || !utf8Valid(msg) {
			t.Skip()
		}
		in := Envelope{V: 1, Kind: RowErrors, Epoch: epoch, Seq: seq, InSeq: Uint64(seq / 2), Traceparent: trace,
			Errors: []RowError{{Row: row, Code: "REJECTED", Message: msg}}}
		switch {
		case row%2 == 0: // a slot of shared memory, any offset and length
			in.Kind, in.Errors, in.Shm = Batch, nil, &Slot{Offset: epoch ^ seq, Length: uint64(row)}
		case row%3 == 0: // the input batch itself: in_seq and nothing else
			in.Kind, in.Errors, in.Traceparent = Unchanged, nil, ""
		}
		b := Encode(&in)
		out, err := Decode(b)
		if err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if again := Encode(&out); !bytes.Equal(again, b) {
			t.Fatalf("not stable:\n%s\n%s", b, again)
		}
	})
}

func utf8Valid(s string) bool { return strings.ToValidUTF8(s, "") == s }

// Whatever bytes a peer sends as an envelope, Decode returns one or an
// error, never panics; what it returns encodes and decodes to itself.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"v":1,"kind":"batch","epoch":1,"seq":0,"shm":{"offset":64,"length":128}}`))
	f.Add([]byte(`{"v":1,"kind":"release","epoch":1,"seq":0,"shm":{"offset":0,"length":18446744073709551615}}`))
	f.Add([]byte(`{"v":1,"kind":"row_errors","epoch":1,"seq":2,"in_seq":1,"errors":[{"row":0,"code":"REJECTED","message":"x"}]}`))
	f.Add([]byte(`{"v":1,"kind":"unchanged","epoch":7,"seq":2,"in_seq":0}`))
	f.Add([]byte(`{"v":1,"kind":"unchanged","epoch":7,"seq":2,"in_seq":0,"shm":{"offset":0,"length":64}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := Decode(b)
		if err != nil {
			return
		}
		again, err := Decode(Encode(&e))
		if err != nil {
			t.Fatalf("%s decoded, its encoding %s does not: %v", b, Encode(&e), err)
		}
		if !bytes.Equal(Encode(&again), Encode(&e)) {
			t.Fatalf("not stable: %s", b)
		}
	})
}
