// Package challenge holds the config server's pending credential
// challenges: a bounded table in memory whose entries expire and are spent
// by the first attempt to take them. A challenge is worth nothing after a
// restart (the agent attests again, as after an expiry), so it is never
// written to the database.
package challenge

import (
	"container/list"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"sync"
	"time"

	"patela/internal/ekid"
)

// Errors of Add and Take.
var (
	ErrFull    = errors.New("too many challenges pending")
	ErrUnknown = errors.New("unknown or spent challenge")
	ErrExpired = errors.New("challenge expired")
)

// Challenge is an outstanding credential activation.
type Challenge struct {
	ID         string // set by Add
	NodeID     int64
	EK         ekid.ID // the node's EK identity when it was issued
	SecretHash []byte
	AKName     []byte
	// Nonce is what the node's quote must carry, AKPublic the AK public
	// area (AKName's) that must sign it.
	Nonce    []byte
	AKPublic []byte
	Issued   time.Time // set by Add
	Expires  time.Time // set by Add: Issued + the table's TTL
}

// Table is the set of pending challenges. It is safe for concurrent use.
type Table struct {
	ttl  time.Duration
	max  int
	mu   sync.Mutex
	byID map[string]*list.Element // of *Challenge
	// order holds the entries oldest first: with one TTL for all, the
	// order of issue is the order of expiry, so expired entries are
	// always at the front.
	order list.List
	swept time.Time
}

// New returns an empty table of challenges that live ttl, at most max of
// them pending at once.
func New(ttl time.Duration, max int) *Table {
	return &Table{ttl: ttl, max: max, byID: make(map[string]*list.Element)}
}

// Add issues c at now under a fresh random id and returns it (ID, Issued
// and Expires set). It first drops the expired challenges, at most once a
// second unless the table is full, and returns them for the caller to
// audit. A full table refuses c with ErrFull and the time until its
// oldest challenge expires: pending challenges are never evicted, so
// whoever floods the server with challenges (anyone who knows an enabled
// node's EK public can) cancels no one else's.
func (t *Table) Add(c Challenge, now time.Time) (issued *Challenge, expired []*Challenge, retry time.Duration, err error) {
	var id [16]byte
	rand.Read(id[:])
	c.ID, c.Issued, c.Expires = hex.EncodeToString(id[:]), now, now.Add(t.ttl)
	t.mu.Lock()
	defer t.mu.Unlock()
	full := len(t.byID) >= t.max
	if full || now.Sub(t.swept) >= time.Second || now.Before(t.swept) {
		expired = t.sweep(now)
	}
	if len(t.byID) >= t.max {
		retry = t.ttl
		if f := t.order.Front(); f != nil {
			retry = f.Value.(*Challenge).Expires.Sub(now)
		}
		return nil, expired, retry, ErrFull
	}
	if _, dup := t.byID[c.ID]; dup { // 128 random bits: never, but never twice
		return nil, expired, 0, errors.New("challenge id collision")
	}
	t.byID[c.ID] = t.order.PushBack(&c)
	return &c, expired, 0, nil
}

// sweep removes and returns the challenges expired at now.
func (t *Table) sweep(now time.Time) []*Challenge {
	t.swept = now
	var out []*Challenge
	for e := t.order.Front(); e != nil; e = t.order.Front() {
		c := e.Value.(*Challenge)
		if now.Before(c.Expires) {
			break
		}
		t.order.Remove(e)
		delete(t.byID, c.ID)
		out = append(out, c)
	}
	return out
}

// Take removes challenge id and returns it: a challenge is spent by the
// first attempt, right or wrong, and of concurrent attempts only one gets
// it. One past its expiry is returned with ErrExpired (it is spent too);
// one never issued, spent or swept is ErrUnknown.
func (t *Table) Take(id string, now time.Time) (*Challenge, error) {
	t.mu.Lock()
	e, ok := t.byID[id]
	if ok {
		t.order.Remove(e)
		delete(t.byID, id)
	}
	t.mu.Unlock()
	if !ok {
		return nil, ErrUnknown
	}
	c := e.Value.(*Challenge)
	if !now.Before(c.Expires) {
		return c, ErrExpired
	}
	return c, nil
}

// Drain removes and returns every pending challenge, oldest first (at
// shutdown, to audit those never answered).
func (t *Table) Drain() []*Challenge {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*Challenge, 0, len(t.byID))
	for e := t.order.Front(); e != nil; e = e.Next() {
		out = append(out, e.Value.(*Challenge))
	}
	t.order.Init()
	clear(t.byID)
	return out
}

// Len is the number of challenges held (expired ones not yet swept
// included).
func (t *Table) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byID)
}
