package pid1

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Uptime is the time since the kernel booted (CLOCK_BOOTTIME), the
// timeline's zero. It does not jump when the wall clock is set.
func Uptime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// Phase is one step of the boot.
type Phase struct {
	Name        string
	Start, Took time.Duration // Start since boot
	Err         error
}

// Timeline records the boot phases and prints each on one line:
//
//	timeline phase=dhcp start=1.92s took=54ms
type Timeline struct {
	log    *slog.Logger
	mu     sync.Mutex
	phases []Phase
}

func NewTimeline(log *slog.Logger) *Timeline { return &Timeline{log: log} }

// Run times fn as the phase name and returns its error.
func (t *Timeline) Run(name string, fn func() error) error {
	start := Uptime()
	err := fn()
	p := Phase{Name: name, Start: start, Took: Uptime() - start, Err: err}
	t.mu.Lock()
	t.phases = append(t.phases, p)
	t.mu.Unlock()
	attrs := []any{"phase", name, "start", p.Start.Round(10 * time.Millisecond), "took", round(p.Took)}
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	t.log.Info("timeline", attrs...)
	return err
}

func round(d time.Duration) time.Duration {
	switch {
	case d > time.Second:
		return d.Round(10 * time.Millisecond)
	case d > time.Millisecond:
		return d.Round(time.Millisecond)
	}
	return d.Round(time.Microsecond)
}

// Phases returns the phases so far.
func (t *Timeline) Phases() []Phase {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]Phase(nil), t.phases...)
}

// ConsoleHandler is a slog handler for the serial console: text, with
// the time since boot instead of the wall clock (which may still be wrong
// when the first lines print) and with debug on request.
func ConsoleHandler(w io.Writer, debug bool) slog.Handler {
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	return &uptimeHandler{slog.NewTextHandler(w, &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	})}
}

type uptimeHandler struct{ slog.Handler }

func (h *uptimeHandler) Handle(ctx context.Context, r slog.Record) error {
	r2 := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool { r2.AddAttrs(a); return true })
	r2.AddAttrs(slog.String("up", strconv.FormatFloat(Uptime().Seconds(), 'f', 3, 64)))
	return h.Handler.Handle(ctx, r2)
}

func (h *uptimeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &uptimeHandler{h.Handler.WithAttrs(as)}
}

func (h *uptimeHandler) WithGroup(name string) slog.Handler {
	return &uptimeHandler{h.Handler.WithGroup(name)}
}
