// Package logring keeps the last lines a process wrote, for a relay's log
// view, and mirrors each line to a structured logger as it arrives.
package logring

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
)

// maxLine bounds one line; longer output is split so a child that never
// writes a newline cannot grow the buffer without limit.
const maxLine = 4096

// Ring is an io.Writer that splits its input into lines and keeps the last
// N of them. It is safe for concurrent use (tor's stdout and stderr share
// one ring).
type Ring struct {
	mu      sync.Mutex
	lines   []string
	next    int  // index the next line goes to
	full    bool // lines has wrapped
	partial []byte
	total   uint64
	log     *slog.Logger
}

// New returns a ring keeping n lines (at least 1). Each complete line is
// also logged at info level to log, unless log is nil.
func New(n int, log *slog.Logger) *Ring {
	if n < 1 {
		n = 1
	}
	return &Ring{lines: make([]string, n), log: log}
}

// Write implements io.Writer; it never fails.
func (r *Ring) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			r.partial = append(r.partial, p...)
			if len(r.partial) >= maxLine {
				r.add(string(r.partial))
				r.partial = r.partial[:0]
			}
			break
		}
		line := p[:i]
		if len(r.partial) > 0 {
			line = append(r.partial, line...)
			r.partial = r.partial[:0]
		}
		r.add(string(bytes.TrimRight(line, "\r")))
		p = p[i+1:]
	}
	return n, nil
}

// Flush adds a trailing unterminated line, if any (call when the writer's
// process has exited).
func (r *Ring) Flush() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.partial) > 0 {
		r.add(string(r.partial))
		r.partial = r.partial[:0]
	}
}

func (r *Ring) add(line string) {
	r.lines[r.next] = line
	r.next++
	r.total++
	if r.next == len(r.lines) {
		r.next = 0
		r.full = true
	}
	if r.log != nil {
		r.log.LogAttrs(context.Background(), slog.LevelInfo, line)
	}
}

// Lines returns the kept lines, oldest first.
func (r *Ring) Lines() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.full {
		return append([]string(nil), r.lines[:r.next]...)
	}
	out := make([]string, 0, len(r.lines))
	out = append(out, r.lines[r.next:]...)
	return append(out, r.lines[:r.next]...)
}

// Total is the number of lines ever written, kept or not.
func (r *Ring) Total() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.total
}
