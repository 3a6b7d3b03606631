// Package wirejson decodes the protocol's request bodies the way the
// server must (docs/protocol.md, "Transport"): a size cap, field names
// exactly as tagged, no name twice in one object, no unknown fields,
// nothing after the value. It is the server's alone, so agents do not
// link encoding/json/v2.
package wirejson

import (
	"bytes"
	"fmt"
	"io"
	"sync"

	"github.com/go-json-experiment/json"

	"patela/internal/api"
)

// Decode reads one JSON request body into v: at most api.MaxBody bytes,
// no unknown fields, nothing after the value.
func Decode(r io.Reader, v any) error { return DecodeLimit(r, v, api.MaxBody) }

// strict are the protocol's JSON rules beyond the size cap, all enforced
// by encoding/json/v2 (github.com/go-json-experiment/json, its mirror):
// field names match their tags exactly (v2 matches case-sensitively; v1
// folded case, so "EK_PUBLIC" would have been ek_public), a name given
// twice in one object at any depth is refused (v1 let the last win: two
// parsers could read different values from one body), unknown fields are
// refused, and Unmarshal refuses anything after the value.
var strict = json.JoinOptions(json.RejectUnknownMembers(true))

// DecodeLimit is Decode for a body of at most limit bytes.
func DecodeLimit(r io.Reader, v any, limit int) error {
	bp := bodyPool.Get().(*[]byte)
	defer putBody(bp)
	data, err := readLimit(r, (*bp)[:0], limit)
	*bp = data
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v, strict); err != nil {
		return fmt.Errorf("malformed JSON: %w", err)
	}
	return nil
}

// bodyPool holds read buffers: a completion body is a few KiB, and
// io.ReadAll grows one from 512 bytes for every request. Unmarshal copies
// what it keeps, so the buffer is free again once it returns.
var bodyPool = sync.Pool{New: func() any { b := make([]byte, 0, 8<<10); return &b }}

func putBody(bp *[]byte) {
	if cap(*bp) <= api.MaxBody { // an occasional large event log is not kept
		bodyPool.Put(bp)
	}
}

// readLimit appends r's bytes to buf, refusing more than limit.
func readLimit(r io.Reader, buf []byte, limit int) ([]byte, error) {
	b := bytes.NewBuffer(buf)
	_, err := b.ReadFrom(io.LimitReader(r, int64(limit)+1))
	if b.Len() > limit {
		return b.Bytes(), fmt.Errorf("body is larger than %d bytes", limit)
	}
	if err != nil {
		return b.Bytes(), fmt.Errorf("reading body: %w", err)
	}
	return b.Bytes(), nil
}
