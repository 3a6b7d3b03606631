package wirejson

import (
	"errors"
	"strings"
	"testing"
	"testing/iotest"

	"patela/internal/api"
)

func TestDecode(t *testing.T) {
	good := `{"boot_id":"b","uptime_s":3,"relays":[{"name":"bra","fingerprint":"","ed25519_id":"","state":"running","restarts":0}]}`
	var s api.Status
	if err := Decode(strings.NewReader(good), &s); err != nil {
		t.Fatalf("good body refused: %v", err)
	}
	if s.BootID != "b" || len(s.Relays) != 1 || s.Relays[0].Name != "bra" {
		t.Fatalf("decoded %+v", s)
	}
	bad := map[string]string{
		"unknown field":      `{"boot_id":"b","extra":1}`,
		"case-folded field":  `{"BOOT_ID":"b"}`,
		"case-folded nested": `{"relays":[{"Name":"bra"}]}`,
		"unknown nested":     `{"relays":[{"name":"bra","pid":7}]}`,
		"wrong type":         `{"uptime_s":"3"}`,
		"trailing data":      `{"boot_id":"b"} {}`,
		"trailing garbage":   `{"boot_id":"b"}x`,
		"not JSON":           `boot_id=b`,
		"empty":              ``,
		"oversized":          `{"boot_id":"` + strings.Repeat("a", api.MaxBody) + `"}`,
		"duplicate key":      `{"boot_id":"b","uptime_s":1,"boot_id":"c"}`,
		"duplicate nested":   `{"relays":[{"name":"bra","name":"toma"}]}`,
		"duplicate, 2nd":     `{"relays":[{"name":"bra"},{"state":"running","state":"failed"}]}`,
		"duplicate escaped":  `{"boot_id":"b","boot\u005fid":"c"}`,
		"invalid UTF-8":      "{\"boot_id\":\"b\xff\"}",
		"lone surrogate":     `{"boot_id":"b\ud800"}`,
		"null byte key":      "{\"boot_id\x00\":\"b\"}",
	}
	for name, body := range bad {
		var s api.Status
		if err := Decode(strings.NewReader(body), &s); err == nil {
			t.Errorf("%s: accepted %.60q", name, body)
		}
	}
}

func TestDecodeBytesField(t *testing.T) {
	var b api.KeyBundle
	if err := Decode(strings.NewReader(`{"bundle":"AAEC","version":4}`), &b); err != nil {
		t.Fatal(err)
	}
	if len(b.Bundle) != 3 || b.Bundle[2] != 2 || b.Version != 4 {
		t.Fatalf("decoded %+v", b)
	}
	if err := Decode(strings.NewReader(`{"bundle":"!!","version":4}`), &b); err == nil {
		t.Fatal("bad base64 accepted")
	}
}

func TestDecodeStricterThanV1(t *testing.T) {
	for name, body := range map[string]string{
		"base64 line break": `{"challenge_id":"x","secret":"AAAA\nAAAA"}`,
		"PCR index 01":      `{"challenge_id":"x","secret":"AA==","quote":{"quoted":"AA==","signature":"AA==","pcrs":{"01":"` + strings.Repeat("00", 32) + `"}}}`,
		"PCR index +1":      `{"challenge_id":"x","secret":"AA==","quote":{"quoted":"AA==","signature":"AA==","pcrs":{"+1":"` + strings.Repeat("00", 32) + `"}}}`,
	} {
		if err := DecodeLimit(strings.NewReader(body), new(api.CompleteRequest), api.MaxCompleteBody); err == nil {
			t.Errorf("%s: accepted %.60q", name, body)
		}
	}
}

// TestDecodeLimit: the cap is exact, a read error is reported as such,
// and values read from a pooled buffer do not change with the next body.
func TestDecodeLimit(t *testing.T) {
	body := func(n int) string { // a api.KeyBundle body of exactly n bytes
		s := `{"bundle":"","version":1}`
		return s[:10] + strings.Repeat(" ", n-len(s)) + s[10:]
	}
	for _, limit := range []int{30, 512, 8 << 10, 8<<10 + 1, 100 << 10} {
		var b api.KeyBundle
		if err := DecodeLimit(strings.NewReader(body(limit)), &b, limit); err != nil || b.Version != 1 {
			t.Errorf("limit %d: a body of %d bytes refused: %v", limit, limit, err)
		}
		err := DecodeLimit(strings.NewReader(body(limit+1)), &b, limit)
		if err == nil || !strings.Contains(err.Error(), "larger than") {
			t.Errorf("limit %d: a body of %d bytes: %v", limit, limit+1, err)
		}
	}
	if err := Decode(iotest.ErrReader(errors.New("reset")), new(api.KeyBundle)); err == nil || !strings.Contains(err.Error(), "reading body: reset") {
		t.Errorf("read error: %v", err)
	}
	if err := Decode(iotest.OneByteReader(strings.NewReader(`{"bundle":"AAEC","version":4}`)), new(api.KeyBundle)); err != nil {
		t.Errorf("one byte at a time: %v", err)
	}
	var first api.Status
	if err := Decode(strings.NewReader(`{"boot_id":"first","relays":[{"name":"a"}]}`), &first); err != nil {
		t.Fatal(err)
	}
	var k api.KeyBundle
	if err := Decode(strings.NewReader(`{"bundle":"`+strings.Repeat("A", 400)+`","version":4}`), &k); err != nil {
		t.Fatal(err)
	}
	if first.BootID != "first" || first.Relays[0].Name != "a" {
		t.Errorf("an earlier value changed: %+v", first)
	}
}
