package httpapi

import (
	"errors"
	"fmt"
	"io"
	"regexp"

	"patela/configsrv/wirejson"
	"patela/internal/api"
	"patela/internal/torrc"
)

// The request decoders: wirejson.Decode (size cap, strict JSON) plus the field
// checks that make a body acceptable before any state is touched.

var (
	featureRE     = regexp.MustCompile(`^[a-z0-9_]{1,32}$`)
	fingerprintRE = regexp.MustCompile(`^[0-9A-F]{40}$`)
	ed25519RE     = regexp.MustCompile(`^[A-Za-z0-9+/]{43}$`)
	sha256RE      = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

func decodeAttest(r io.Reader) (*api.AttestRequest, error) {
	var v api.AttestRequest
	if err := wirejson.Decode(r, &v); err != nil {
		return nil, err
	}
	if len(v.EKPublic) == 0 {
		return nil, errors.New("ek_public is required")
	}
	if len(v.AKPublic) == 0 {
		return nil, errors.New("ak_public is required")
	}
	return &v, nil
}

func decodeComplete(r io.Reader) (*api.CompleteRequest, error) {
	var v api.CompleteRequest
	if err := wirejson.DecodeLimit(r, &v, api.MaxCompleteBody); err != nil {
		return nil, err
	}
	if v.ChallengeID == "" || len(v.ChallengeID) > 128 {
		return nil, errors.New("challenge_id is required (at most 128 characters)")
	}
	if len(v.Secret) == 0 {
		return nil, errors.New("secret is required")
	}
	if q := v.Quote; q != nil {
		if len(q.Quoted) == 0 || len(q.Signature) == 0 || len(q.PCRs) == 0 {
			return nil, errors.New("quote: quoted, signature and pcrs are required")
		}
		if len(q.EventLog) > api.MaxEventLog {
			return nil, fmt.Errorf("quote: event_log is larger than %d bytes", api.MaxEventLog)
		}
		for n := range q.PCRs {
			if n < 0 || n > 23 {
				return nil, fmt.Errorf("quote: pcrs: %d is not a PCR index", n)
			}
		}
	}
	return &v, nil
}

func decodeSpecs(r io.Reader) (*api.Specs, error) {
	var v api.Specs
	if err := wirejson.Decode(r, &v); err != nil {
		return nil, err
	}
	if v.CPUs < 1 || v.CPUs > 1<<16 {
		return nil, fmt.Errorf("cpus %d is out of range 1..65536", v.CPUs)
	}
	if v.MemoryBytes == 0 || v.MemoryBytes > 1<<52 {
		return nil, fmt.Errorf("memory_bytes %d is out of range", v.MemoryBytes)
	}
	if len(v.CPUModel) > 256 {
		return nil, errors.New("cpu_model is longer than 256 bytes")
	}
	if len(v.Features) > 16 {
		return nil, errors.New("more than 16 features")
	}
	for _, f := range v.Features {
		// Unknown features are taken (a newer agent's), malformed ones not:
		// they are stored as a comma list.
		if !featureRE.MatchString(f) {
			return nil, fmt.Errorf("feature %.32q is not 1-32 of a-z 0-9 _", f)
		}
	}
	return &v, nil
}

func decodeKeyBundle(r io.Reader) (*api.KeyBundle, error) {
	var v api.KeyBundle
	if err := wirejson.Decode(r, &v); err != nil {
		return nil, err
	}
	if len(v.Bundle) == 0 {
		return nil, errors.New("bundle is required")
	}
	if v.Version == 0 || v.Version > 1<<63-1 {
		return nil, errors.New("version must be in 1..2^63-1")
	}
	return &v, nil
}

func decodeStatus(r io.Reader) (*api.Status, error) {
	var v api.Status
	if err := wirejson.Decode(r, &v); err != nil {
		return nil, err
	}
	if len(v.BootID) > 64 {
		return nil, errors.New("boot_id is longer than 64 bytes")
	}
	if v.UptimeS < 0 {
		return nil, errors.New("uptime_s is negative")
	}
	if len(v.Relays) > 256 {
		return nil, errors.New("more than 256 relays")
	}
	for _, rs := range v.Relays {
		if rs.Name == "" || len(rs.Name) > 19 || len(rs.State) > 32 || rs.Restarts < 0 {
			return nil, fmt.Errorf("relay %.19q: name, state or restarts out of range", rs.Name)
		}
		// Fingerprints end up in other relays' MyFamily lines: only what
		// tor writes is taken, never a value that could add a line.
		if rs.Fingerprint != "" && !fingerprintRE.MatchString(rs.Fingerprint) {
			return nil, fmt.Errorf("relay %s: fingerprint is not 40 upper-case hex digits", rs.Name)
		}
		if rs.Ed25519ID != "" && !ed25519RE.MatchString(rs.Ed25519ID) {
			return nil, fmt.Errorf("relay %s: ed25519_id is not 43 characters of base64", rs.Name)
		}
		if rs.TorrcSHA256 != "" && !sha256RE.MatchString(rs.TorrcSHA256) {
			return nil, fmt.Errorf("relay %s: torrc_sha256 is not 64 lower-case hex digits", rs.Name)
		}
		if len(rs.RefusedOptions) > 64 {
			return nil, fmt.Errorf("relay %.19q: more than 64 refused_options", rs.Name)
		}
		for _, o := range rs.RefusedOptions {
			if _, ok := torrc.Canonical(o); !ok {
				return nil, fmt.Errorf("relay %.19q: refused_options: %.64q is not a tor option", rs.Name, o)
			}
		}
	}
	if v.Metrics != nil {
		if err := checkMetrics(v.Metrics); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	return &v, nil
}

// maxCounter is the largest figure SQLite's INTEGER holds.
const maxCounter = 1<<63 - 1

// checkMetrics bounds a heartbeat's metrics summary: every figure fits the
// database, every string is short.
func checkMetrics(m *api.NodeMetrics) error {
	if m.AgentRSSBytes > maxCounter || m.MemAvailableBytes > maxCounter || m.MemTotalBytes > maxCounter {
		return errors.New("a node figure is above 2^63-1")
	}
	if len(m.Relays) > 256 {
		return errors.New("more than 256 relays")
	}
	for _, r := range m.Relays {
		if r.Name == "" || len(r.Name) > 19 || len(r.Error) > 200 || len(r.Flags) > 16 {
			return fmt.Errorf("relay %.19q: name, error (200 bytes) or flags (16) out of range", r.Name)
		}
		for _, f := range r.Flags {
			if len(f) > 16 {
				return fmt.Errorf("relay %s: flag %.16q... is longer than 16 bytes", r.Name, f)
			}
		}
		for _, n := range []uint64{r.BytesRead, r.BytesWritten, r.ORConns, r.ExitConns, r.Circuits, r.OnionskinsProcessed,
			r.OnionskinsDropped, r.DNSQueries, r.DNSErrors, r.DNSTimeouts, r.TorRSSBytes} {
			if n > maxCounter {
				return fmt.Errorf("relay %s: a figure is above 2^63-1", r.Name)
			}
		}
		if r.SigningCertExpires < 0 || r.UptimeS < 0 {
			return fmt.Errorf("relay %s: signing_cert_expires or uptime_s is negative", r.Name)
		}
	}
	return nil
}
