package challenge

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestTakeOnce(t *testing.T) {
	tb := New(time.Minute, 10)
	now := time.Unix(1000, 0)
	c, _, _, err := tb.Add(Challenge{NodeID: 7, SecretHash: []byte{1}}, now)
	if err != nil || len(c.ID) != 32 || !c.Expires.Equal(now.Add(time.Minute)) || !c.Issued.Equal(now) {
		t.Fatalf("%+v %v", c, err)
	}
	got, err := tb.Take(c.ID, now.Add(59*time.Second))
	if err != nil || got.NodeID != 7 {
		t.Fatalf("%+v %v", got, err)
	}
	if _, err := tb.Take(c.ID, now); !errors.Is(err, ErrUnknown) {
		t.Fatalf("second take: %v", err)
	}
	if _, err := tb.Take("nonexistent", now); !errors.Is(err, ErrUnknown) {
		t.Fatalf("unknown: %v", err)
	}
	// Past its expiry it is returned (to audit) as expired, and spent.
	c, _, _, _ = tb.Add(Challenge{NodeID: 8}, now)
	if got, err := tb.Take(c.ID, now.Add(time.Minute)); !errors.Is(err, ErrExpired) || got.NodeID != 8 {
		t.Fatalf("expired: %+v %v", got, err)
	}
	if _, err := tb.Take(c.ID, now); !errors.Is(err, ErrUnknown) || tb.Len() != 0 {
		t.Fatalf("expired twice: %v, %d held", err, tb.Len())
	}
}

// Of many concurrent takes of one challenge exactly one gets it.
func TestConcurrentTake(t *testing.T) {
	tb := New(time.Minute, 10)
	now := time.Unix(1000, 0)
	c, _, _, _ := tb.Add(Challenge{NodeID: 7}, now)
	var wg sync.WaitGroup
	var won atomic.Int32
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := tb.Take(c.ID, now); err == nil {
				won.Add(1)
			}
		}()
	}
	wg.Wait()
	if won.Load() != 1 {
		t.Fatalf("%d takes won", won.Load())
	}
}

// A full table refuses new challenges until one is taken or expires; the
// pending ones are kept; expired ones are swept and returned once.
func TestBoundAndSweep(t *testing.T) {
	tb := New(time.Minute, 3)
	now := time.Unix(1000, 0)
	var ids []string
	for i := range 3 {
		c, _, _, err := tb.Add(Challenge{NodeID: int64(i)}, now.Add(time.Duration(i)*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, c.ID)
	}
	at := now.Add(10 * time.Second)
	c, exp, retry, err := tb.Add(Challenge{NodeID: 9}, at)
	if !errors.Is(err, ErrFull) || c != nil || len(exp) != 0 || retry != 50*time.Second {
		t.Fatalf("full: %+v %v %v %v", c, exp, retry, err)
	}
	if tb.Len() != 3 {
		t.Fatalf("%d held after a refusal", tb.Len())
	}
	// Taking one frees its place; the others still answer.
	if _, err := tb.Take(ids[1], at); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := tb.Add(Challenge{NodeID: 9}, at); err != nil {
		t.Fatal(err)
	}
	// Full again; once the first expires it is swept (and returned) and
	// its place goes to the newcomer.
	if _, _, _, err := tb.Add(Challenge{NodeID: 10}, at); !errors.Is(err, ErrFull) {
		t.Fatalf("full again: %v", err)
	}
	c, exp, _, err = tb.Add(Challenge{NodeID: 10}, now.Add(time.Minute))
	if err != nil || len(exp) != 1 || exp[0].ID != ids[0] {
		t.Fatalf("after an expiry: %+v %v %v", c, exp, err)
	}
	if _, err := tb.Take(ids[0], now); !errors.Is(err, ErrUnknown) {
		t.Fatalf("swept challenge: %v", err)
	}
	if _, err := tb.Take(ids[2], now.Add(time.Minute)); err != nil {
		t.Fatalf("pending challenge after the sweep: %v", err)
	}
	// Sweeps of a table with room run at most once a second.
	tb = New(100*time.Millisecond, 10)
	tb.Add(Challenge{}, now)
	if _, exp, _, _ := tb.Add(Challenge{}, now.Add(500*time.Millisecond)); len(exp) != 0 {
		t.Fatalf("second sweep within a second: %d", len(exp))
	}
	if _, exp, _, _ := tb.Add(Challenge{}, now.Add(time.Second)); len(exp) != 2 {
		t.Fatalf("sweep: %d", len(exp))
	}
	// A full table sweeps whenever asked: a place freed by an expiry is
	// given at once.
	tb = New(time.Minute, 1)
	tb.Add(Challenge{}, now)
	if _, _, retry, err := tb.Add(Challenge{}, now.Add(time.Minute-500*time.Millisecond)); !errors.Is(err, ErrFull) || retry != 500*time.Millisecond {
		t.Fatalf("full: %v %v", retry, err)
	}
	if _, exp, _, err := tb.Add(Challenge{}, now.Add(time.Minute)); err != nil || len(exp) != 1 {
		t.Fatalf("full table after an expiry: %d swept, %v", len(exp), err)
	}
	if d := tb.Drain(); len(d) != 1 || tb.Len() != 0 {
		t.Fatalf("drain: %d, %d left", len(d), tb.Len())
	}
}
