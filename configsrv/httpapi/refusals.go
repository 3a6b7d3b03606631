package httpapi

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"
)

// refusalWindow is how long refusals of one kind from one client are
// gathered into one audit row.
const refusalWindow = time.Minute

// refusals counts refused requests and audits them in aggregate: one row
// per client (address, /64 or node), action and minute, whatever the
// request rate, so a flood of refused requests costs the database a row a
// minute per client instead of a row per request.
type refusals struct {
	mu     sync.Mutex
	open   map[refusalKey]*refusalAgg // windows not yet written
	total  map[string]int64           // per action, since start
	start  sync.Once
	stop   chan struct{}
	done   chan struct{}
	closed bool
}

type refusalKey struct{ client, action string }

type refusalAgg struct {
	n       int
	first   time.Time
	actor   string
	target  string
	details string // of the last refusal
}

// auditRow is one aggregated row to write.
type auditRow struct{ actor, action, target, details string }

// add counts one refusal.
func (r *refusals) add(client, actor, action, target, details string, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.total == nil {
		r.total, r.open = map[string]int64{}, map[refusalKey]*refusalAgg{}
	}
	r.total[action]++
	k := refusalKey{client, action}
	a := r.open[k]
	if a == nil {
		a = &refusalAgg{first: now}
		r.open[k] = a
	}
	a.n++
	a.actor, a.target, a.details = actor, target, details
}

// due removes and returns the rows of windows older than refusalWindow at
// now (all of them when all is set), oldest first.
func (r *refusals) due(now time.Time, all bool) []auditRow {
	r.mu.Lock()
	defer r.mu.Unlock()
	type dated struct {
		t time.Time
		auditRow
	}
	var out []dated
	for k, a := range r.open {
		if !all && now.Sub(a.first) < refusalWindow {
			continue
		}
		delete(r.open, k)
		d := fmt.Sprintf("%d refused since %s", a.n, a.first.UTC().Format(time.RFC3339))
		if a.details != "" {
			d += "; last: " + a.details
		}
		out = append(out, dated{a.first, auditRow{a.actor, k.action, a.target, d}})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].t.Before(out[j].t) })
	rows := make([]auditRow, len(out))
	for i, d := range out {
		rows[i] = d.auditRow
	}
	return rows
}

// Totals returns how many requests were refused, per audit action, since
// the server started.
func (r *refusals) Totals() map[string]int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]int64, len(r.total))
	for k, v := range r.total {
		out[k] = v
	}
	return out
}

// run writes due windows every few seconds until stop is closed, then
// everything left.
func (r *refusals) run(write func([]auditRow), now func() time.Time) {
	defer close(r.done)
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			write(r.due(now(), true))
			return
		case <-t.C:
			if rows := r.due(now(), false); len(rows) > 0 {
				write(rows)
			}
		}
	}
}

// refuse counts and audits (in aggregate) a refused request from client.
func (s *Server) refuse(client, actor, action, target, details string) {
	s.refused.start.Do(func() {
		s.refused.stop, s.refused.done = make(chan struct{}), make(chan struct{})
		go s.refused.run(s.writeRefusals, s.now)
	})
	s.refused.add(client, actor, action, target, details, s.now())
}

func (s *Server) writeRefusals(rows []auditRow) {
	ctx := context.Background()
	for _, a := range rows {
		s.audit(ctx, a.actor, a.action, a.target, a.details) // logs it too
	}
}

// Refusals returns the refused requests per audit action since start.
func (s *Server) Refusals() map[string]int64 { return s.refused.Totals() }

// CloseAudit writes the refusals not yet audited and stops their writer,
// and forgets the pending challenges (auditing them: a restart spends
// them); call it once the HTTP server has stopped (refusals after it are
// not audited). It is safe to call more than once.
func (s *Server) CloseAudit() {
	s.auditChallenges(context.Background(), s.challenges().Drain(), "unanswered at shutdown")
	s.refused.start.Do(func() {}) // no writer started: nothing to write
	s.refused.mu.Lock()
	stop, closed := s.refused.stop, s.refused.closed
	s.refused.closed = true
	s.refused.mu.Unlock()
	if stop == nil || closed {
		return
	}
	close(stop)
	<-s.refused.done
}
