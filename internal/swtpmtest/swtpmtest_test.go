package swtpmtest

import (
	"testing"

	"github.com/google/go-tpm/tpm2"
)

func TestStartAndRandom(t *testing.T) {
	tp := Start(t)
	tr, err := tp.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	rsp, err := tpm2.GetRandom{BytesRequested: 16}.Execute(tr)
	if err != nil {
		t.Fatal(err)
	}
	if len(rsp.RandomBytes.Buffer) != 16 {
		t.Fatalf("got %d random bytes, want 16", len(rsp.RandomBytes.Buffer))
	}
}
