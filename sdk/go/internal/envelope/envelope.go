// Package envelope is the JSON envelope of protocol.md section 4: the
// app_metadata of every FlightData message of an exchange.
//
// Encoding is canonical and byte-identical with the Rust SDK (serde_json):
// keys in the documented order, absent optional keys omitted, no whitespace,
// UTF-8 written as is. It is written by hand rather than with encoding/json
// because encoding/json always escapes U+2028 and U+2029 (and turns invalid
// UTF-8 into an escaped \ufffd), which serde_json does not; the golden vectors
// in testdata/protocol/envelopes.jsonl and TestMatchesEncodingJSON pin the
// result. Decoding uses encoding/json: numbers go straight into uint64, never
// through a float, so 2^64-1 and 2^53+1 survive.
package envelope

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Version is the only envelope version, the value of key "v".
const Version = 1

// Kind says what a message is.
type Kind string

// The kinds of protocol.md section 4.
const (
	Batch     Kind = "batch"      // a message with a record batch body
	End       Kind = "end"        // engine → stage: no more input in this exchange
	Ack       Kind = "ack"        // stage → engine: an input batch produced no output row
	RowErrors Kind = "row_errors" // stage → engine: rows of an input batch that failed
	Flushed   Kind = "flushed"    // stage → engine: every output row was sent; last message
	Release   Kind = "release"    // v1.1 shared memory: the receiver is done with a slot (Shm)
	// Unchanged (v1.1, stage → engine, only when the open request offers
	// it): the output for input batch InSeq is that batch itself, all its
	// rows as the engine sent them; the engine reuses the batch it holds
	// instead of receiving the rows again. No body, no Shm.
	Unchanged Kind = "unchanged"
)

func (k Kind) valid() bool {
	switch k {
	case Batch, End, Ack, RowErrors, Flushed, Release, Unchanged:
		return true
	}
	return false
}

// Lineage identifies the stage implementation that produced a batch.
type Lineage struct {
	Stage    string `json:"stage"`
	Kind     string `json:"kind"`
	Version  string `json:"version"`
	Language string `json:"language"`
}

// RowError is one entry of "errors": Row indexes the input batch InSeq.
type RowError struct {
	Row     int64  `json:"row"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Envelope is one app_metadata object. Optional numbers are pointers so
// that a present 0 (an in_seq of the first batch, zero flushed rows) is
// kept and re-encoded.
type Envelope struct {
	V           int        `json:"v"`
	Kind        Kind       `json:"kind"`
	Epoch       uint64     `json:"epoch"`
	Seq         uint64     `json:"seq"`
	InSeq       *uint64    `json:"in_seq,omitempty"`
	Traceparent string     `json:"traceparent,omitempty"`
	Lineage     *Lineage   `json:"lineage,omitempty"`
	Errors      []RowError `json:"errors,omitempty"`
	Rows        *uint64    `json:"rows,omitempty"`
	// Snapshot is the state of a stateful v1.1 stage after the exchange,
	// base64 (standard alphabet, padded) as it is on the wire, only on
	// "flushed". nil: absent; "" is an empty state, and is written.
	Snapshot *string `json:"snapshot,omitempty"`
	// Shm (v1.1, shared memory) is, on a "batch", the slot holding its IPC
	// messages, and on a "release" the slot given back. nil: absent.
	Shm *Slot `json:"shm,omitempty"`
}

// Slot is a range of the exchange's shared memory.
type Slot struct {
	Offset uint64 `json:"offset"`
	Length uint64 `json:"length"`
}

// Uint64 returns a pointer to v, for InSeq and Rows.
func Uint64(v uint64) *uint64 { return &v }

// String returns a pointer to s, for Snapshot.
func String(s string) *string { return &s }

// Encode returns the canonical bytes of e.
func Encode(e *Envelope) []byte { return Append(make([]byte, 0, 128), e) }

// Append appends the canonical bytes of e to dst.
func Append(dst []byte, e *Envelope) []byte {
	dst = append(dst, `{"v":`...)
	dst = strconv.AppendInt(dst, int64(e.V), 10)
	dst = append(dst, `,"kind":`...)
	dst = AppendString(dst, string(e.Kind))
	dst = append(dst, `,"epoch":`...)
	dst = strconv.AppendUint(dst, e.Epoch, 10)
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendUint(dst, e.Seq, 10)
	if e.InSeq != nil {
		dst = append(dst, `,"in_seq":`...)
		dst = strconv.AppendUint(dst, *e.InSeq, 10)
	}
	if e.Traceparent != "" {
		dst = append(dst, `,"traceparent":`...)
		dst = AppendString(dst, e.Traceparent)
	}
	if l := e.Lineage; l != nil {
		dst = append(dst, `,"lineage":{"stage":`...)
		dst = AppendString(dst, l.Stage)
		dst = append(dst, `,"kind":`...)
		dst = AppendString(dst, l.Kind)
		dst = append(dst, `,"version":`...)
		dst = AppendString(dst, l.Version)
		dst = append(dst, `,"language":`...)
		dst = AppendString(dst, l.Language)
		dst = append(dst, '}')
	}
	if len(e.Errors) > 0 {
		dst = append(dst, `,"errors":[`...)
		for i, re := range e.Errors {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, `{"row":`...)
			dst = strconv.AppendInt(dst, re.Row, 10)
			dst = append(dst, `,"code":`...)
			dst = AppendString(dst, re.Code)
			dst = append(dst, `,"message":`...)
			dst = AppendString(dst, re.Message)
			dst = append(dst, '}')
		}
		dst = append(dst, ']')
	}
	if e.Rows != nil {
		dst = append(dst, `,"rows":`...)
		dst = strconv.AppendUint(dst, *e.Rows, 10)
	}
	if e.Snapshot != nil {
		dst = append(dst, `,"snapshot":`...)
		dst = AppendString(dst, *e.Snapshot)
	}
	if e.Shm != nil {
		dst = append(dst, `,"shm":{"offset":`...)
		dst = strconv.AppendUint(dst, e.Shm.Offset, 10)
		dst = append(dst, `,"length":`...)
		dst = strconv.AppendUint(dst, e.Shm.Length, 10)
		dst = append(dst, '}')
	}
	return append(dst, '}')
}

const hex = "0123456789abcdef"

// AppendString appends s as a JSON string the way serde_json writes it:
// `"` and `\` escaped, \b \f \n \r \t in short form, other control
// characters as \u00xx (lower-case hex), everything else as is. Invalid
// UTF-8 (which a Rust string cannot hold) becomes U+FFFD, unescaped.
func AppendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				dst = append(dst, s[start:i]...)
				dst = utf8.AppendRune(dst, utf8.RuneError)
				i++
				start = i
				continue
			}
			i += size
			continue
		}
		if c >= 0x20 && c != '"' && c != '\\' {
			i++
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\f':
			dst = append(dst, '\\', 'f')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
		}
		i++
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// wire is what Decode reads: the keys that must always be present are
// pointers, so a missing one is an error rather than a silent zero.
type wire struct {
	V           *int       `json:"v"`
	Kind        *Kind      `json:"kind"`
	Epoch       *uint64    `json:"epoch"`
	Seq         *uint64    `json:"seq"`
	InSeq       *uint64    `json:"in_seq"`
	Traceparent string     `json:"traceparent"`
	Lineage     *Lineage   `json:"lineage"`
	Errors      []RowError `json:"errors"`
	Rows        *uint64    `json:"rows"`
	Snapshot    *string    `json:"snapshot"`
	Shm         *wireSlot  `json:"shm"`
}

// wireSlot is a Slot whose keys must both be present.
type wireSlot struct {
	Offset *uint64 `json:"offset"`
	Length *uint64 `json:"length"`
}

// Decode parses an envelope. It checks what every envelope must have (v = 1,
// a known kind, epoch and seq); which optional keys a kind needs is the
// caller's business. Unknown keys are ignored.
func Decode(b []byte) (Envelope, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return Envelope{}, errors.New("envelope: empty app_metadata")
	}
	var w wire
	if err := json.Unmarshal(b, &w); err != nil {
		return Envelope{}, fmt.Errorf("envelope: %w", err)
	}
	switch {
	case w.V == nil:
		return Envelope{}, errors.New(`envelope: missing "v"`)
	case *w.V != Version:
		return Envelope{}, fmt.Errorf(`envelope: unsupported version "v":%d, want %d`, *w.V, Version)
	case w.Kind == nil:
		return Envelope{}, errors.New(`envelope: missing "kind"`)
	case !w.Kind.valid():
		return Envelope{}, fmt.Errorf("envelope: unknown kind %q", *w.Kind)
	case w.Epoch == nil:
		return Envelope{}, errors.New(`envelope: missing "epoch"`)
	case w.Seq == nil:
		return Envelope{}, errors.New(`envelope: missing "seq"`)
	case w.Shm != nil && (w.Shm.Offset == nil || w.Shm.Length == nil):
		return Envelope{}, errors.New(`envelope: "shm" needs "offset" and "length"`)
	case *w.Kind == Release && w.Shm == nil:
		return Envelope{}, errors.New(`envelope: a "release" must name its slot ("shm")`)
	case w.Shm != nil && *w.Kind != Batch && *w.Kind != Release:
		return Envelope{}, fmt.Errorf(`envelope: a %q names a slot of shared memory ("shm"); only "batch" and "release" do`, *w.Kind)
	}
	var shm *Slot
	if w.Shm != nil {
		shm = &Slot{Offset: *w.Shm.Offset, Length: *w.Shm.Length}
	}
	return Envelope{
		V:           *w.V,
		Kind:        *w.Kind,
		Epoch:       *w.Epoch,
		Seq:         *w.Seq,
		InSeq:       w.InSeq,
		Traceparent: w.Traceparent,
		Lineage:     w.Lineage,
		Errors:      w.Errors,
		Rows:        w.Rows,
		Snapshot:    w.Snapshot,
		Shm:         shm,
	}, nil
}
