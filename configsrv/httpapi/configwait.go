package httpapi

// GET /v1/node/config, conditional and long-polled (docs/protocol.md,
// "Long poll"): answered at once when the node's config differs from the
// ETag it sends, else held until its config generation moves or the wait
// is over. A held HTTP/1.1 request is hijacked and parked in the hub: it
// then costs its connection, no goroutine and none of net/http's buffers,
// and is answered (Connection: close) by a hub worker. HTTP/2 requests
// cannot be hijacked and wait in their handler. A parked request's heap
// is ~9 KiB, ~6.5 KiB of it the connection's crypto/tls state (its read
// and handshake buffers, sized by the ClientHello, are never shrunk); the
// poll keeps only its token's claims and its ETag, and its node's cached
// body is dropped (the node has it).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"patela/configsrv/longpoll"
	"patela/configsrv/resolve"
	"patela/configsrv/token"
	"patela/internal/api"
)

// Long-poll defaults.
const (
	DefaultMaxWait    = 30 * time.Minute
	DefaultWatchEvery = 100 * time.Millisecond
	// rawWriteTimeout bounds writing a parked request's answer.
	rawWriteTimeout = 10 * time.Second
)

// startLongPoll starts the hub and its store watcher, once.
func (s *Server) startLongPoll() {
	s.lpOnce.Do(func() {
		if s.MaxWait <= 0 {
			s.MaxWait = DefaultMaxWait
		}
		if s.WatchEvery <= 0 {
			s.WatchEvery = DefaultWatchEvery
		}
		s.hub = longpoll.New(0, s.log())
		ctx, cancel := context.WithCancel(context.Background())
		s.stopWatch = cancel
		go s.hub.Watch(ctx, s.Store, s.WatchEvery)
	})
}

// Close answers every held config request (304) and stops the watcher.
// The HTTP server's shutdown calls it (hijacked requests are not the
// server's any more).
func (s *Server) Close() {
	s.startLongPoll()
	s.stopWatch()
	s.hub.Close()
}

// Waiting is the number of config requests held.
func (s *Server) Waiting() int {
	s.startLongPoll()
	return s.hub.Waiting()
}

// answer is what a config request gets.
type answer struct {
	status int
	etag   string
	body   []byte // JSON, with its final newline
}

func errAnswer(status int, code api.ErrorCode, msg string) *answer {
	b, _ := json.Marshal(&api.Error{Message: msg, Code: code})
	return &answer{status: status, body: append(b, '\n')}
}

func (a *answer) write(w http.ResponseWriter) {
	if a.etag != "" {
		w.Header().Set("ETag", a.etag)
	}
	if a.status == http.StatusNotModified {
		w.WriteHeader(a.status)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(a.status)
	w.Write(a.body)
}

// writeRaw answers a hijacked request and closes its connection; it
// returns the body bytes written.
func (a *answer) writeRaw(conn net.Conn, now time.Time) int64 {
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\nDate: %s\r\nConnection: close\r\n", a.status, http.StatusText(a.status),
		now.UTC().Format(http.TimeFormat))
	if a.etag != "" {
		fmt.Fprintf(&b, "ETag: %s\r\n", a.etag)
	}
	var n int64
	if a.status != http.StatusNotModified {
		fmt.Fprintf(&b, "Content-Type: application/json\r\nContent-Length: %d\r\n", len(a.body))
		n = int64(len(a.body))
	}
	b.WriteString("\r\n")
	if a.status != http.StatusNotModified {
		b.Write(a.body)
	}
	conn.SetWriteDeadline(time.Now().Add(rawWriteTimeout))
	if _, err := conn.Write(b.Bytes()); err != nil {
		n = 0
	}
	conn.Close()
	return n
}

// parseWait reads the wait query parameter: whole seconds, 0 or more.
func parseWait(r *http.Request) (time.Duration, error) {
	v := r.URL.Query().Get("wait")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 31)
	if err != nil {
		return 0, fmt.Errorf("wait=%q: want whole seconds, 0 or more", v)
	}
	return time.Duration(n) * time.Second, nil
}

// matches reports whether an If-None-Match header names etag: a list of
// entity tags compared weakly (RFC 9110), or "*".
func matches(inm, etag string) bool {
	for _, t := range strings.Split(inm, ",") {
		t = strings.TrimSpace(t)
		if t == "*" || strings.TrimPrefix(t, "W/") == etag {
			return true
		}
	}
	return false
}

// current returns node's config at its current generation: the ETag, and
// the body when withBody (rendered unless cached) or when it had to be
// rendered anyway.
func (s *Server) current(ctx context.Context, id int64, withBody bool) (etag string, body []byte, err error) {
	gen, err := s.Store.NodeConfigGen(ctx, id)
	if err != nil {
		return "", nil, err
	}
	etag, body, ok := s.configs.get(id, gen)
	if ok && (body != nil || !withBody) {
		return etag, body, nil
	}
	fleet, err := s.fleet.at(ctx, s.Store)
	if err != nil {
		return "", nil, err
	}
	c, err := resolve.NodeConfig(ctx, s.Store, id, fleet)
	if err != nil {
		return "", nil, err
	}
	if body, err = json.Marshal(c); err != nil {
		return "", nil, err
	}
	body = append(body, '\n')
	served, err := digestsOf(c)
	if err != nil {
		return "", nil, err
	}
	// Cached under the generation read before resolving: a change made
	// meanwhile moves it, so a stale body is never served for long.
	etag = etagOf(gen, body)
	s.configs.put(id, gen, etag, body, served)
	return etag, body, nil
}

// served is each relay's torrc_sha256 in node id's current config.
func (s *Server) served(ctx context.Context, id int64) (map[string]string, error) {
	gen, err := s.Store.NodeConfigGen(ctx, id)
	if err != nil {
		return nil, err
	}
	if d, ok := s.configs.servedAt(id, gen); ok {
		return servedMap(d), nil
	}
	if _, _, err := s.current(ctx, id, true); err != nil {
		return nil, err
	}
	d, _ := s.configs.servedAt(id, gen)
	return servedMap(d), nil
}

// unsafeAnswer is the answer to a config the safety rules refuse
// (resolve.UnsafeError): not the node's doing, the administrator must fix
// it; the node keeps running what it has. nil for any other error.
func (s *Server) unsafeAnswer(id int64, err error) *answer {
	var unsafe *resolve.UnsafeError
	if !errors.As(err, &unsafe) {
		return nil
	}
	s.log().Warn("config refused", "node", id, "err", err)
	return errAnswer(http.StatusConflict, api.CodeUnsafeConfig, "the server refuses to serve this config: "+err.Error())
}

// look is what a config request with If-None-Match inm gets now; nil
// means nothing changed.
func (s *Server) look(ctx context.Context, id int64, inm string) (*answer, error) {
	etag, body, err := s.current(ctx, id, false)
	if a := s.unsafeAnswer(id, err); a != nil {
		return a, nil
	}
	if err != nil {
		return nil, err
	}
	if matches(inm, etag) {
		return nil, nil
	}
	if body == nil { // cached as a tag only
		etag, body, err = s.current(ctx, id, true)
		if a := s.unsafeAnswer(id, err); a != nil {
			return a, nil
		}
		if err != nil {
			return nil, err
		}
	}
	return &answer{status: http.StatusOK, etag: etag, body: body}, nil
}

func (s *Server) config(w http.ResponseWriter, r *http.Request, id int64) {
	ctx := r.Context()
	wait, err := parseWait(r)
	if err != nil {
		writeErr(w, http.StatusBadRequest, api.CodeBadRequest, err.Error())
		return
	}
	inm := r.Header.Get("If-None-Match")
	mark := s.hub.Mark() // before the generation is read: see longpoll.Hub.Mark
	if inm == "" {
		etag, body, err := s.current(ctx, id, true)
		if a := s.unsafeAnswer(id, err); a != nil {
			a.write(w)
			return
		}
		if err != nil {
			s.internal(w, r, err)
			return
		}
		(&answer{status: http.StatusOK, etag: etag, body: body}).write(w)
		return
	}
	a, err := s.look(ctx, id, inm)
	if err != nil {
		s.internal(w, r, err)
		return
	}
	if a != nil || wait <= 0 {
		if a == nil {
			etag, _, _ := s.current(ctx, id, false)
			a = &answer{status: http.StatusNotModified, etag: etag}
		}
		a.write(w)
		return
	}
	s.configs.dropBody(id)
	p := &poll{s: s, node: id, inm: inm, deadline: s.now().Add(s.hold(wait))}
	p.keepToken(strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "))
	if r.ProtoMajor == 1 {
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			conn.SetDeadline(time.Time{})
			p.conn, p.logged = conn, parkLog(w)
			s.hub.Park(id, p, mark, p.deadline)
			return
		}
	}
	p.signal = make(chan bool, 1)
	s.holdInHandler(w, r, p, mark)
}

// hold is how long a request asking to wait is held: at most MaxWait,
// shortened by up to a tenth at random so that nodes which started
// together drift apart.
func (s *Server) hold(wait time.Duration) time.Duration {
	d := min(wait, s.MaxWait)
	return d - rand.N(d/10+1)
}

// holdInHandler waits in the handler (HTTP/2) until the poll is answered
// or the client goes away.
func (s *Server) holdInHandler(w http.ResponseWriter, r *http.Request, p *poll, mark uint64) {
	http.NewResponseController(w).SetWriteDeadline(p.deadline.Add(rawWriteTimeout))
	cancel := s.hub.Park(p.node, p, mark, p.deadline)
	for {
		select {
		case <-r.Context().Done():
			cancel()
			return
		case woke := <-p.signal:
			var a *answer
			if woke {
				mark = s.hub.Mark()
				a = p.again(r.Context())
			} else {
				a = p.notModified(r.Context())
			}
			if a != nil {
				a.write(w)
				return
			}
			cancel = s.hub.Park(p.node, p, mark, p.deadline)
		}
	}
}

// poll is one held config request, a longpoll.Waiter.
type poll struct {
	s    *Server
	node int64
	// What the wake re-checks the node's right to an answer with: the
	// token's claims when the token is valid past the deadline (its
	// signature cannot change, so the node's row is what is left to
	// check), else the token itself, verified again. ~50 bytes instead
	// of the ~400 of a token kept for each of ten thousand waits.
	claims   token.Claims
	tok      string
	inm      string
	deadline time.Time

	conn   net.Conn                  // hijacked (HTTP/1.1); nil: in its handler
	logged func(status int, n int64) // the access log's line, once answered; nil: none
	signal chan bool                 // in its handler: true woken, false expired
}

func (p *poll) Wake() {
	if p.conn == nil {
		p.signal <- true
		return
	}
	mark := p.s.hub.Mark()
	if a := p.again(context.Background()); a != nil {
		p.answerRaw(a)
		return
	}
	p.s.hub.Park(p.node, p, mark, p.deadline)
}

func (p *poll) Expire() {
	if p.conn == nil {
		p.signal <- false
		return
	}
	p.answerRaw(p.notModified(context.Background()))
}

// keepToken keeps what the wake needs of the request's token, which the
// node guard accepted: its claims if it is still valid at the deadline
// (then all through the hold: validity ends at an expiry), else tok.
func (p *poll) keepToken(tok string) {
	if c, err := p.s.Tokens.Verify(tok, p.deadline); err == nil && c.Node == p.node {
		p.claims = c
		return
	}
	p.tok = tok
}

// again looks after a wake: the node's right to an answer first (it may
// have been disabled, its token may have expired meanwhile), then its
// config. nil: keep waiting.
func (p *poll) again(ctx context.Context) *answer {
	if p.tok == "" && !p.s.now().Before(p.deadline) {
		// Past the time the claims were vouched for: no config, the
		// node's next request is checked anew.
		return p.notModified(ctx)
	}
	if a := p.recheck(ctx); a != nil {
		return a
	}
	a, err := p.s.look(ctx, p.node, p.inm)
	if err != nil {
		p.s.log().Error("long poll", "node", p.node, "err", err)
		return errAnswer(http.StatusInternalServerError, api.CodeInternal, "internal error")
	}
	if a == nil && !p.s.now().Before(p.deadline) {
		return p.notModified(ctx)
	}
	return a
}

func (p *poll) notModified(ctx context.Context) *answer {
	etag, _, err := p.s.current(ctx, p.node, false)
	if err != nil || !matches(p.inm, etag) {
		etag = "" // the next request finds out
	}
	return &answer{status: http.StatusNotModified, etag: etag}
}

func (p *poll) answerRaw(a *answer) {
	n := a.writeRaw(p.conn, p.s.now())
	if p.logged != nil {
		p.logged(a.status, n)
	}
}

// recheck is the node guard again for a held request, without counting
// it as another request: nil if the token and the node may still have an
// answer.
func (p *poll) recheck(ctx context.Context) *answer {
	if p.tok == "" {
		return p.s.admit(ctx, p.claims)
	}
	id, a := p.s.authorize(ctx, p.tok)
	if a == nil && id != p.node {
		a = errAnswer(http.StatusUnauthorized, api.CodeUnauthorized, "token names another node")
	}
	return a
}
