package tor

import (
	"context"
	"time"
)

// saver is the one road to Keys.Save: relays ask for a save (new keys
// captured, a relay retired or back) and it saves, retrying with
// backoff after a failure (the mirror down, an NV write error) until one
// succeeds, so keys never wait for the next change to be saved. Until
// then Keys.Unsaved says which relays a reboot would cost their
// identity; every outcome is announced on Changes.
type saver struct {
	o       *Options
	changed func()
	req     chan struct{} // one pending request at most
	stop    chan struct{}
	done    chan struct{}
}

func newSaver(o *Options, changed func()) *saver {
	s := &saver{o: o, changed: changed, req: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go s.run()
	return s
}

// request asks for a save; it never blocks.
func (s *saver) request() {
	select {
	case s.req <- struct{}{}:
	default:
	}
}

// close stops retrying after one last attempt if a save is pending.
func (s *saver) close() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
}

func (s *saver) run() {
	defer close(s.done)
	delay := s.o.SaveRetryMin
	var retry <-chan time.Time
	for {
		select {
		case <-s.req:
		case <-retry:
		case <-s.stop:
			select {
			case <-s.req:
				s.save() // a last one at shutdown
			default:
			}
			return
		}
		if err := s.save(); err != nil {
			s.o.Log.Error("saving relay keys failed; retrying (a reboot now would lose the unsaved relays' identity)", "err", err, "in", delay)
			retry = time.After(delay)
			delay = min(2*delay, s.o.SaveRetryMax)
			continue
		}
		retry, delay = nil, s.o.SaveRetryMin
	}
}

func (s *saver) save() error {
	ctx, cancel := context.WithTimeout(context.Background(), s.o.SaveTimeout)
	defer cancel()
	err := s.o.Keys.Save(ctx)
	if err == nil {
		s.o.Log.Info("relay keys saved")
	}
	s.changed() // Unsaved may have changed either way
	return err
}
