package httpapi

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// AccessLog wraps h so that every request, once answered, writes one line
// to w: time, client address, method, path, status, response bytes and
// duration. Nothing a client sends beyond the path is written (no query,
// no headers: the bearer token stays out of the log), and the path is
// quoted, so a client cannot forge lines.
func AccessLog(h http.Handler, w io.Writer) http.Handler {
	var mu sync.Mutex
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusWriter{ResponseWriter: rw, status: http.StatusOK}
		h.ServeHTTP(rec, r)
		// Only what the line needs is kept: a parked request's line is
		// written when it is answered, and holding the *http.Request
		// until then (its headers, TLS state, context) costs ~1 KiB per
		// held long poll.
		client, method, path := clientAddr(r), r.Method, r.URL.Path
		logLine := func(status int, n int64) {
			line := fmt.Sprintf("%s %s %s %s %d %d %s\n", start.UTC().Format(time.RFC3339Nano), client, method,
				strconv.Quote(path), status, n, time.Since(start).Round(time.Microsecond))
			mu.Lock()
			io.WriteString(w, line)
			mu.Unlock()
		}
		if rec.parked != nil {
			rec.parked.ready(logLine)
			return
		}
		logLine(rec.status, rec.bytes)
	})
}

// parker is a ResponseWriter whose request is answered after its handler
// returns (a parked long poll).
type parker interface {
	park() func(status int, n int64)
}

// parkLog tells the wrappers of w that record answers (the access log,
// the metrics) that its request will be answered later; it returns what
// tells them the answer then (nil: none records).
func parkLog(w http.ResponseWriter) func(status int, n int64) {
	var all []func(int, int64)
	for {
		if p, ok := w.(parker); ok {
			all = append(all, p.park())
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			break
		}
		w = u.Unwrap()
	}
	if len(all) == 0 {
		return nil
	}
	return func(status int, n int64) {
		for _, f := range all {
			f(status, n)
		}
	}
}

// statusWriter records what a handler answered.
type statusWriter struct {
	http.ResponseWriter
	status      int
	bytes       int64
	wroteHeader bool

	parked *deferredLine // the request is answered after its handler returns
}

// park implements parker.
func (s *statusWriter) park() func(status int, n int64) {
	s.parked = &deferredLine{}
	return s.parked.answered
}

// deferredLine is the access log line of a parked request, written by
// whichever comes last: its answer or its handler's return.
type deferredLine struct {
	mu     sync.Mutex
	write  func(status int, n int64)
	status int
	n      int64
	done   bool
}

func (d *deferredLine) answered(status int, n int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.write != nil {
		d.write(status, n)
		return
	}
	d.status, d.n, d.done = status, n, true
}

func (d *deferredLine) ready(write func(status int, n int64)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.write = write
	if d.done {
		write(d.status, d.n)
	}
}

func (s *statusWriter) WriteHeader(code int) {
	if !s.wroteHeader {
		s.status, s.wroteHeader = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	s.wroteHeader = true
	n, err := s.ResponseWriter.Write(b)
	s.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// Observer is told of every answered request (configsrv/metrics).
type Observer interface {
	// Observe gets the route pattern that took the request ("/" for no
	// endpoint), the status answered and how long it took.
	Observe(pattern string, status int, took time.Duration)
}

// Instrument wraps h, the API's mux, so that o observes every request.
// The pattern is what the mux matched, so its values are the routes the
// API has: a client cannot make new ones.
func Instrument(h http.Handler, o Observer) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusWriter{ResponseWriter: rw, status: http.StatusOK}
		h.ServeHTTP(rec, r)
		if rec.parked != nil { // a held long poll: observed once answered, without holding r
			pattern := r.Pattern
			rec.parked.ready(func(status int, _ int64) { o.Observe(pattern, status, time.Since(start)) })
			return
		}
		o.Observe(r.Pattern, rec.status, time.Since(start))
	})
}
