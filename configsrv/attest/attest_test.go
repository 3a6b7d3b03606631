package attest

import (
	"bytes"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"patela/configsrv/attest/softek"
)

// The AK Name computed from the wire bytes equals go-tpm's ObjectName.
func TestAKNameMatchesObjectName(t *testing.T) {
	for i := 0; i < 5; i++ {
		b, err := softek.AKPublic()
		if err != nil {
			t.Fatal(err)
		}
		pub, name, err := ParseAK(b)
		if err != nil {
			t.Fatal(err)
		}
		want, err := tpm2.ObjectName(pub)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(name, want.Buffer) {
			t.Fatalf("name %x, ObjectName %x", name, want.Buffer)
		}
	}
}
