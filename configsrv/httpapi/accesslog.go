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
		line := fmt.Sprintf("%s %s %s %s %d %d %s\n", start.UTC().Format(time.RFC3339Nano), clientAddr(r), r.Method,
			strconv.Quote(r.URL.Path), rec.status, rec.bytes, time.Since(start).Round(time.Microsecond))
		mu.Lock()
		io.WriteString(w, line)
		mu.Unlock()
	})
}

// statusWriter records what a handler answered.
type statusWriter struct {
	http.ResponseWriter
	status      int
	bytes       int64
	wroteHeader bool
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
