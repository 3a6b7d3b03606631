package api

import (
	"strings"
	"testing"
)

func TestDecode(t *testing.T) {
	good := `{"boot_id":"b","uptime_s":3,"relays":[{"name":"bra","fingerprint":"","ed25519_id":"","state":"running","restarts":0}]}`
	var s Status
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
		"oversized":          `{"boot_id":"` + strings.Repeat("a", MaxBody) + `"}`,
		"duplicate key":      `{"boot_id":"b","uptime_s":1,"boot_id":"c"}`,
		"duplicate nested":   `{"relays":[{"name":"bra","name":"toma"}]}`,
		"duplicate, 2nd":     `{"relays":[{"name":"bra"},{"state":"running","state":"failed"}]}`,
		"duplicate escaped":  `{"boot_id":"b","boot\u005fid":"c"}`,
	}
	for name, body := range bad {
		var s Status
		if err := Decode(strings.NewReader(body), &s); err == nil {
			t.Errorf("%s: accepted %.60q", name, body)
		}
	}
}

func TestDecodeBytesField(t *testing.T) {
	var b KeyBundle
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
