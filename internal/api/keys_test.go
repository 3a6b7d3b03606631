package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

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
			var ft reflect.Type
			switch {
			case fields != nil:
				var ok bool
				if ft, ok = fields[k]; !ok {
					return fmt.Errorf("unknown field %q", k)
				}
			case t != nil && t.Kind() == reflect.Map:
				ft = t.Elem()
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
	for _, typ := range []reflect.Type{reflect.TypeOf(&Status{}), reflect.TypeOf(&CompleteRequest{}),
		reflect.TypeOf(&AttestRequest{}), reflect.TypeOf(&KeyBundle{}), nil} {
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
		var v CompleteRequest
		if err := DecodeLimit(bytes.NewReader(body), &v, MaxCompleteBody); err != nil {
			b.Fatal(err)
		}
	}
}
