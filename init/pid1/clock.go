package pid1

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"golang.org/x/sys/unix"
)

// Epoch is the earliest time this agent can run at: no clock that reads
// earlier is right. (The build time of a reproducible build is not known
// to the binary; the source's own date is.)
var Epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// ClockFloor is the earliest plausible time given the server CA: a
// machine whose clock is before the CA was issued cannot be right, and
// would fail every TLS handshake with it.
func ClockFloor(caPEM []byte) time.Time {
	floor := Epoch
	for _, c := range parseCerts(caPEM) {
		if c.NotBefore.After(floor) {
			floor = c.NotBefore
		}
	}
	return floor
}

func parseCerts(pemData []byte) []*x509.Certificate {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, pemData = pem.Decode(pemData)
		if b == nil {
			return out
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		if c, err := x509.ParseCertificate(b.Bytes); err == nil {
			out = append(out, c)
		}
	}
}

// ServerTime asks the config server for the time: the Date header of an
// HTTPS answer. The clock is wrong at this point (that is why we ask), so
// ordinary certificate verification, which compares validity dates with
// the local clock, cannot be used and must not be skipped either. The
// chain is verified against the CA at the leaf's own NotBefore instead:
// this proves the answer comes from the holder of a key our CA
// certified, without trusting our clock. The Date is then accepted only
// if it falls inside the leaf's validity and after floor, so a server key
// cannot move us to a time its certificate does not cover.
func ServerTime(ctx context.Context, serverURL string, caPEM []byte, floor time.Time) (time.Time, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return time.Time{}, errors.New("server CA: no PEM certificate")
	}
	var leaf *x509.Certificate
	tc := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // replaced by VerifyConnection below
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("no server certificate")
			}
			l := cs.PeerCertificates[0]
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := l.Verify(x509.VerifyOptions{
				Roots: pool, Intermediates: inter, DNSName: cs.ServerName,
				CurrentTime: l.NotBefore.Add(time.Second),
			})
			if err != nil {
				return fmt.Errorf("server certificate: %w", err)
			}
			leaf = l
			return nil
		},
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 15 * time.Second}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, serverURL, nil)
	if err != nil {
		return time.Time{}, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return time.Time{}, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	date, err := http.ParseTime(resp.Header.Get("Date"))
	if err != nil {
		return time.Time{}, fmt.Errorf("server sent no usable Date header (%q)", resp.Header.Get("Date"))
	}
	switch {
	case leaf == nil:
		return time.Time{}, errors.New("TLS connection was not verified")
	case date.Before(leaf.NotBefore) || date.After(leaf.NotAfter):
		return time.Time{}, fmt.Errorf("server Date %v outside its certificate's validity %v..%v", date, leaf.NotBefore, leaf.NotAfter)
	case date.Before(floor):
		return time.Time{}, fmt.Errorf("server Date %v is before %v", date, floor)
	}
	return date, nil
}

// SetClock sets the system clock (PID 1 only; on a host it only logs).
func SetClock(t time.Time, log *slog.Logger) error {
	before := time.Now()
	if !IsPID1() {
		log.Info("not PID 1: clock left alone", "would_set", t.UTC(), "now", before.UTC())
		return nil
	}
	tv := unix.NsecToTimeval(t.UnixNano())
	if err := unix.Settimeofday(&tv); err != nil {
		return fmt.Errorf("settimeofday: %w", err)
	}
	log.Warn("CLOCK SET from the config server's Date header", "was", before.UTC(), "now", t.UTC())
	return nil
}
