package wirejson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"patela/internal/api"
)

// v1Decode is DecodeLimit as it was before encoding/json/v2: encoding/json
// plus a byte scan for exact and duplicate keys. The new decoder must
// accept no body this one refused, read the same values from every body
// both accept, and accept every body an older agent (encoding/json's
// Marshal) sends.
func v1Decode(data []byte, v any, limit int) error {
	if len(data) > limit {
		return fmt.Errorf("body is larger than %d bytes", limit)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("malformed JSON: %w", err)
	}
	if dec.More() {
		return errors.New("malformed JSON: data after the value")
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("malformed JSON: data after the value")
	}
	return exactKeys(data, reflect.TypeOf(v))
}

// exactKeys checks, in data (one JSON value that encoding/json has just
// decoded, so well formed), that no object repeats a key and, where t
// describes a struct, that every key is spelled exactly as one of its
// json tags, recursing into arrays, maps and nested structs. A byte scan:
// json.Decoder.Token allocates for every token, which made this check as
// dear as the decoding itself.
func exactKeys(data []byte, t reflect.Type) error {
	ks := keyScan{data: data}
	return ks.value(t)
}

type keyScan struct {
	data []byte
	i    int
}

func (s *keyScan) ws() {
	for s.i < len(s.data) {
		switch s.data[s.i] {
		case ' ', '\t', '\r', '\n':
			s.i++
		default:
			return
		}
	}
}

// str reads the string at s.i (its opening quote) and returns its raw
// bytes and whether they need unescaping to be the string's value.
func (s *keyScan) str() (raw []byte, plain bool) {
	s.i++ // '"'
	start, plain := s.i, true
	for s.i < len(s.data) {
		switch c := s.data[s.i]; {
		case c == '"':
			raw = s.data[start:s.i]
			s.i++
			return raw, plain
		case c == '\\':
			plain = false
			s.i += 2
		case c >= 0x80:
			// encoding/json replaces invalid UTF-8 with U+FFFD: let it
			// say what the key is.
			plain = false
			s.i++
		default:
			s.i++
		}
	}
	return s.data[start:], plain
}

func (s *keyScan) value(t reflect.Type) error {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	s.ws()
	if s.i >= len(s.data) {
		return errors.New("malformed JSON: unexpected end")
	}
	switch s.data[s.i] {
	case '{':
		s.i++
		var fields map[string]reflect.Type
		if t != nil && t.Kind() == reflect.Struct {
			fields = jsonFields(t)
		}
		var seen []string
		var seenSet map[string]bool // past a few keys, so a huge object stays linear
		for {
			s.ws()
			if s.i >= len(s.data) {
				return errors.New("malformed JSON: unexpected end")
			}
			if s.data[s.i] == '}' {
				s.i++
				return nil
			}
			if s.data[s.i] == ',' {
				s.i++
				s.ws()
			}
			raw, plain := s.str()
			k := string(raw)
			if !plain {
				if err := json.Unmarshal(append(append([]byte{'"'}, raw...), '"'), &k); err != nil {
					return fmt.Errorf("malformed JSON: %w", err)
				}
			}
			dup := seenSet[k]
			if seenSet == nil {
				dup = slices.Contains(seen, k)
				if seen = append(seen, k); len(seen) > 16 {
					seenSet = map[string]bool{}
					for _, k := range seen {
						seenSet[k] = true
					}
				}
			} else {
				seenSet[k] = true
			}
			if dup {
				return fmt.Errorf("malformed JSON: duplicate key %q", k)
			}
			ft, ok := memberType(t, fields, k)
			if !ok {
				return fmt.Errorf("malformed JSON: unknown field %q", k)
			}
			s.ws()
			s.i++ // ':'
			if err := s.value(ft); err != nil {
				return err
			}
		}
	case '[':
		s.i++
		var et reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			et = t.Elem()
		}
		for {
			s.ws()
			if s.i >= len(s.data) {
				return errors.New("malformed JSON: unexpected end")
			}
			switch s.data[s.i] {
			case ']':
				s.i++
				return nil
			case ',':
				s.i++
			}
			if err := s.value(et); err != nil {
				return err
			}
		}
	case '"':
		s.str()
	default: // a number, true, false or null
		for s.i < len(s.data) {
			switch s.data[s.i] {
			case ',', '}', ']', ' ', '\t', '\r', '\n':
				return nil
			}
			s.i++
		}
	}
	return nil
}

// memberType is the type member k of a value of type t decodes into:
// fields (t's jsonFields) name it for a struct, a map's is its element
// type, anything else's is unknown (nil). ok is false for a name the
// struct does not have.
func memberType(t reflect.Type, fields map[string]reflect.Type, k string) (ft reflect.Type, ok bool) {
	switch {
	case fields != nil:
		ft, ok = fields[k]
		return ft, ok
	case t != nil && t.Kind() == reflect.Map:
		return t.Elem(), true
	}
	return nil, true
}

// fieldsOf caches jsonFields by type: every request would build it again.
var fieldsOf sync.Map // reflect.Type -> map[string]reflect.Type

// jsonFields maps the json names of struct t's fields to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	if f, ok := fieldsOf.Load(t); ok {
		return f.(map[string]reflect.Type)
	}
	fields := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		fields[name] = f.Type
	}
	fieldsOf.Store(t, fields)
	return fields
}

// tokenExactKeys is the check as it was first written, with
// json.Decoder.Token: the oracle the byte scan must agree with.
func tokenExactKeys(dec *json.Decoder, t reflect.Type) error {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	switch tok {
	case json.Delim('{'):
		var fields map[string]reflect.Type
		if t != nil && t.Kind() == reflect.Struct {
			fields = jsonFields(t)
		}
		seen := map[string]bool{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return err
			}
			k, _ := kt.(string)
			if seen[k] {
				return fmt.Errorf("duplicate key %q", k)
			}
			seen[k] = true
			ft, ok := memberType(t, fields, k)
			if !ok {
				return fmt.Errorf("unknown field %q", k)
			}
			if err := tokenExactKeys(dec, ft); err != nil {
				return err
			}
		}
		_, err = dec.Token()
	case json.Delim('['):
		var et reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			et = t.Elem()
		}
		for dec.More() {
			if err := tokenExactKeys(dec, et); err != nil {
				return err
			}
		}
		_, err = dec.Token()
	}
	return err
}

// agree checks that the byte scan and the oracle accept and refuse the
// same well-formed bodies, for each wire type.
func agree(t *testing.T, body []byte) {
	t.Helper()
	if !json.Valid(body) {
		return
	}
	for _, typ := range []reflect.Type{reflect.TypeOf(&api.Status{}), reflect.TypeOf(&api.CompleteRequest{}),
		reflect.TypeOf(&api.AttestRequest{}), reflect.TypeOf(&api.KeyBundle{}), nil} {
		want := tokenExactKeys(json.NewDecoder(bytes.NewReader(body)), typ)
		got := exactKeys(body, typ)
		if (want == nil) != (got == nil) {
			t.Errorf("%v %.200q: token check says %v, byte scan %v", typ, body, want, got)
		}
	}
}

func TestExactKeysAgrees(t *testing.T) {
	many := make([]string, 40)
	for i := range many {
		many[i] = fmt.Sprintf(`"%d":"AA=="`, i)
	}
	for _, body := range []string{
		`{"boot_id":"b","uptime_s":3,"relays":[{"name":"bra","state":"running","restarts":0}]}`,
		`{"boot_id":"b","boot_id":"c"}`,
		`{"boot_id":"b","boot\u005fid":"c"}`,
		`{"boot\u005fid":"b"}`,
		`{"BOOT_ID":"b"}`,
		`{"relays":[{"name":"bra"},{"state":"running","state":"failed"}]}`,
		`{"relays":[{"Name":"bra"}]}`,
		` { "relays" : [ { "name" : "a\"}" } , { "name" : "b" } ] , "uptime_s" : -1.5e3 } `,
		`{"challenge_id":"x","secret":"AA==","quote":{"quoted":"AA==","signature":"AA==","pcrs":{"0":"AA==","0":"AQ=="}}}`,
		`{"challenge_id":"x","secret":"AA==","quote":{"quoted":"AA==","signature":"AA==","pcrs":{` + strings.Join(many, ",") + `}}}`,
		`{"challenge_id":"x","secret":"AA==","quote":{"quoted":"AA==","signature":"AA==","pcrs":{` + strings.Join(many, ",") + `,"3":"AA=="}}}`,
		`{"challenge_id":"x","quote":null,"secret":"AA=="}`,
		"{\"boot_id\":\"b\",\"a\xff\":1,\"a\\ufffd\":2}",
		`{"boot_id":"b","x":{"y":[1,{"z":true,"z":false}]}}`,
		`[{"a":1,"a":2}]`, `"s"`, `3`, `null`, `{}`, `[]`,
	} {
		agree(t, []byte(body))
	}
}

func FuzzExactKeys(f *testing.F) {
	f.Add([]byte(`{"boot_id":"b","relays":[{"name":"bra","name":"x"}]}`))
	f.Add([]byte(`{"challenge_id":"x","secret":"AA==","quote":{"pcrs":{"1":"AA==","01":"AA=="}}}`))
	f.Add([]byte(`{"boot\u005fid":"b","boot_id":"c"}`))
	f.Fuzz(func(t *testing.T, body []byte) { agree(t, body) })
}

// requestTypes are the bodies the server decodes with Decode.
var requestTypes = []func() any{
	func() any { return new(api.AttestRequest) }, func() any { return new(api.CompleteRequest) },
	func() any { return new(api.Specs) }, func() any { return new(api.KeyBundle) },
	func() any { return new(api.Status) }, func() any { return new(api.ReleaseRequest) },
}

// agreeV1 checks DecodeLimit against v1Decode on one body for every
// request type: never more lenient, the same values where both accept,
// and where only v1 accepted, a spelling no encoding/json Marshal writes
// (v1Only says which).
func agreeV1(t *testing.T, body []byte) {
	t.Helper()
	for _, mk := range requestTypes {
		got, want := mk(), mk()
		err := DecodeLimit(bytes.NewReader(body), got, api.MaxCompleteBody)
		v1err := v1Decode(body, want, api.MaxCompleteBody)
		switch {
		case err == nil && v1err != nil:
			t.Errorf("%T %.200q: v1 refused (%v), v2 accepts", got, body, v1err)
		case err == nil && !reflect.DeepEqual(got, want):
			t.Errorf("%T %.200q: v2 read %+v, v1 %+v", got, body, got, want)
		case err != nil && v1err == nil:
			// What v1 read, as an agent's Marshal writes it, must still be
			// taken, with the same value.
			again, err2 := json.Marshal(want)
			if err2 != nil {
				t.Fatal(err2)
			}
			back := mk()
			if err2 := DecodeLimit(bytes.NewReader(again), back, api.MaxCompleteBody); err2 != nil || !reflect.DeepEqual(back, want) {
				t.Errorf("%T %.200q: v1's reading, re-marshalled %.200q, is refused (%v) or read differently", got, body, again, err2)
			}
			if !v1Only(body) {
				t.Errorf("%T %.200q: v2 refuses (%v) what v1 took, for no documented reason", got, body, err)
			}
		}
	}
}

// v1Only reports whether body has one of the spellings only v1 took
// (docs/protocol.md, "Transport"): invalid UTF-8 or an unpaired surrogate
// escape in a string, a line break inside base64, a PCR index that is not
// a plain decimal integer ("01", "+1", "-0").
func v1Only(body []byte) bool {
	var walk func(v any) bool
	walk = func(v any) bool {
		switch v := v.(type) {
		case map[string]any:
			for k, e := range v {
				if v1OnlyString(k) || walk(e) {
					return true
				}
			}
		case []any:
			return slices.ContainsFunc(v, walk)
		case string:
			return v1OnlyString(v)
		}
		return false
	}
	var v any
	if json.Unmarshal(body, &v) != nil {
		return false
	}
	return walk(v)
}

// v1OnlyString is a string v1 decoded that v2 refuses: U+FFFD stands for
// what v1 replaced, a line break for base64, the rest for PCR indexes.
func v1OnlyString(s string) bool {
	if strings.ContainsAny(s, "\ufffd\r\n") {
		return true
	}
	d := strings.TrimPrefix(s, "-")
	return strings.HasPrefix(s, "+") || d != "" && d[0] == '0' && (len(d) > 1 || s != d)
}

func TestDecodeAgreesWithV1(t *testing.T) {
	for _, body := range v1Corpus() {
		agreeV1(t, []byte(body))
	}
}

func FuzzDecodeAgreesWithV1(f *testing.F) {
	for _, body := range v1Corpus() {
		f.Add([]byte(body))
	}
	f.Fuzz(func(t *testing.T, body []byte) { agreeV1(t, body) })
}

// v1Corpus holds what agents send (encoding/json's Marshal of each request
// type) and the edge cases of both decoders.
var v1Corpus = sync.OnceValue(func() []string {
	pcrs := map[int]string{}
	for i := 0; i < 16; i++ {
		pcrs[i] = strings.Repeat(fmt.Sprintf("%02x", i), 32)
	}
	var bodies []string
	for _, v := range []any{
		api.AttestRequest{EKPublic: []byte{0, 1}, AKPublic: []byte("ak"), EKCertificate: []byte{0x30}},
		api.AttestRequest{EKPublic: []byte{0, 1}, AKPublic: []byte("ak")},
		api.CompleteRequest{ChallengeID: "c", Secret: make([]byte, 32)},
		map[string]any{"challenge_id": "c", "secret": "AAAA", "quote": map[string]any{"quoted": "AA==", "signature": "AQ==",
			"pcrs": pcrs, "event_log": make([]byte, 100)}},
		api.Specs{CPUs: 2, MemoryBytes: 1 << 30, CPUModel: "QEMU Virtual CPU", Features: []string{"family_keys"}},
		api.Specs{CPUs: 2, MemoryBytes: 1 << 30},
		api.KeyBundle{Bundle: []byte("b"), Version: 3},
		api.Status{BootID: "b", UptimeS: 9, Relays: []api.RelayStatus{{Name: "r", Fingerprint: "F", State: "running", RefusedOptions: []string{"ExitPolicy"}, KeysUnsaved: true}},
			Metrics: &api.NodeMetrics{AgentRSSBytes: 5, Relays: []api.RelayMetrics{{Name: "r", Flags: []string{"Exit"}, SigningCertExpires: -1}}}},
		api.Status{BootID: "b", Relays: []api.RelayStatus{}},
		map[string]any{"sealing": "release", "pcrs": pcrs},
		api.ReleaseRequest{Sealing: "unmeasured"},
	} {
		b, err := json.Marshal(v)
		if err != nil {
			panic(err)
		}
		bodies = append(bodies, string(b))
	}
	q := func(pcrs string) string {
		return `{"challenge_id":"x","secret":"AA==","quote":{"quoted":"AA==","signature":"AA==","pcrs":{` + pcrs + `}}}`
	}
	p1 := `"` + pcrs[1] + `"`
	return append(bodies,
		`{"challenge_id":"x","secret":"AA==","quote":null}`, `{"ek_public":null,"ak_public":"AA=="}`,
		q(`"0":null`), q(`"01":`+p1), q(`"+1":`+p1+`,"1":`+p1), q(`"1.0":`+p1), q(`"1e0":`+p1), q(`"-0":`+p1), q(`"-1":`+p1),
		q(`" 1":`+p1), q(`"1":`+p1+`,"1":`+p1), q(`"9223372036854775808":`+p1), q(`"1":"`+strings.ToUpper(pcrs[1][:62])+`AA"`),
		`{"challenge_id":"x","secret":"AAAA\nAA=="}`, `{"challenge_id":"x","secret":"AA\r\nAA=="}`, `{"challenge_id":"x","secret":"AA"}`,
		`{"challenge_id":"x","secret":"AB=="}`, `{"challenge_id":"x","secret":"A-_="}`, `{"challenge_id":"x","secret":""}`,
		"{\"challenge_id\":\"x\xff\",\"secret\":\"AA==\"}", `{"challenge_id":"x\ud800","secret":"AA=="}`,
		`{"challenge_id":"\u00e9\u0000\ud83d\ude00","secret":"AA=="}`, "{\"challenge_id\":\"\x01\",\"secret\":\"AA==\"}",
		`{"cpus":1e0,"memory_bytes":1}`, `{"cpus":1.0,"memory_bytes":1}`, `{"cpus":-0,"memory_bytes":1}`, `{"cpus":"1","memory_bytes":1}`,
		`{"cpus":1,"memory_bytes":18446744073709551616}`, `{"cpus":1,"memory_bytes":-1}`, `{"cpus":null,"memory_bytes":1}`,
		`{"cpus":01,"memory_bytes":1}`, `{"cpus":1,"memory_bytes":1,"features":null}`, `{"cpus":1,"memory_bytes":1,"features":[null]}`,
		`{"bundle":"AA==","version":1}  `, `{"bundle":"AA==","version":1} x`, `{"bundle":"AA==","version":1}{}`,
		`{"boot_id":"b","boot_id":"c"}`, `{"boot_id":"b","boot\u005fid":"c"}`, `{"BOOT_ID":"b"}`, `{"Boot_Id":"b"}`,
		`{"relays":[{"name":"bra"},{"state":"running","state":"failed"}]}`, `{"relays":[{"Name":"bra"}]}`,
		`{"relays":[{"name":"bra","pid":1}]}`, `{"metrics":{"relays":[{"name":"r","flags":["a","a"],"uptime_s":1}]}}`,
		`{"metrics":{"relays":[{"name":"r","name":"s"}]}}`, `{"metrics":null}`, `{"metrics":{}}`,
		`{"sealing":"release","pcrs":{"0":"`+pcrs[0]+`","0":"`+pcrs[1]+`"}}`,
		`{"sealing":"release","pcrs":{"0":"`+pcrs[0]+`","\u0030":"`+pcrs[1]+`"}}`, `{"sealing":"release","pcrs":{"x":"`+pcrs[0]+`"}}`,
		`{"sealing":"release","pcrs":{"0":"`+pcrs[0][:62]+`"}}`, `{"sealing":"release","pcrs":[]}`, `{"sealing":"release","pcrs":{}}`,
		`{"relays":null}`, `{"relays":[null]}`, `{"relays":{}}`, `[]`, `null`, `{}`, ``, ` `, `"s"`, `{"boot_id":1}`, `{"boot_id":"a"`,
	)
})

// BenchmarkDecodeComplete decodes a current agent's completion body (a
// quote over 16 PCRs with a 2 KiB event log), as the server does.
func BenchmarkDecodeComplete(b *testing.B) {
	pcrs := map[int]string{}
	for i := 0; i < 16; i++ {
		pcrs[i] = strings.Repeat(fmt.Sprintf("%02x", i), 32)
	}
	body, err := json.Marshal(map[string]any{"challenge_id": strings.Repeat("c", 32), "secret": make([]byte, 32),
		"quote": map[string]any{"quoted": make([]byte, 145), "signature": make([]byte, 72), "pcrs": pcrs, "event_log": make([]byte, 2048)}})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		var v api.CompleteRequest
		if err := DecodeLimit(bytes.NewReader(body), &v, api.MaxCompleteBody); err != nil {
			b.Fatal(err)
		}
	}
}
