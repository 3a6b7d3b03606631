package logring

import (
	"bytes"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"testing"
)

func TestKeepsLastLinesInOrder(t *testing.T) {
	r := New(3, nil)
	fmt.Fprint(r, "one\ntwo\nthr")
	fmt.Fprint(r, "ee\r\nfour\n")
	if got, want := r.Lines(), []string{"two", "three", "four"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("lines = %q, want %q", got, want)
	}
	if r.Total() != 4 {
		t.Fatalf("total = %d, want 4", r.Total())
	}
	fmt.Fprint(r, "tail")
	r.Flush()
	if got, want := r.Lines(), []string{"three", "four", "tail"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("after flush lines = %q, want %q", got, want)
	}
}

func TestMirrorsToLogger(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil)).With("relay", "murazzano")
	r := New(10, log)
	fmt.Fprint(r, "[notice] Bootstrapped 0%\n")
	if s := buf.String(); !strings.Contains(s, "relay=murazzano") || !strings.Contains(s, "Bootstrapped 0%") {
		t.Fatalf("log output %q lacks the relay or the line", s)
	}
}

func TestLongLineIsSplit(t *testing.T) {
	r := New(4, nil)
	r.Write(bytes.Repeat([]byte("x"), maxLine+10))
	if got := r.Lines(); len(got) != 1 || len(got[0]) != maxLine+10 {
		// the whole chunk arrived in one write: it becomes one line
		t.Fatalf("got %d lines", len(got))
	}
	r.Write(bytes.Repeat([]byte("y"), maxLine-1))
	r.Write([]byte("yy"))
	if got := r.Lines(); len(got) != 2 {
		t.Fatalf("unterminated output past %d bytes not split: %d lines", maxLine, len(got))
	}
}

func BenchmarkWrite(b *testing.B) {
	r := New(1000, nil)
	line := []byte("Nov 22 00:02:02.000 [notice] Bootstrapped 0% (starting): Starting\n")
	b.SetBytes(int64(len(line)))
	for i := 0; i < b.N; i++ {
		r.Write(line)
	}
}
