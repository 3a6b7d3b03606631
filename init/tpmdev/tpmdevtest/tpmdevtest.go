// Package tpmdevtest gives tests a machine whose TPM survives reboots: a
// real swtpm on a state directory the test owns, opened through tpmdev
// exactly as the agent opens its TPM, with a command counter in front.
package tpmdevtest

import (
	"testing"

	"github.com/google/go-tpm/tpm2/transport"

	"patela/init/tpmdev"
	"patela/internal/swtpmtest"
)

// Machine is a node's TPM across reboots.
type Machine struct {
	T     *testing.T
	State string // swtpm state directory: the TPM's NV, kept across Boot
	TPM   *swtpmtest.TPM
	Dev   transport.TPMCloser
	Cnt   *tpmdev.Counter // counts every command sent through Dev
}

// New boots a machine with a fresh TPM.
func New(t *testing.T) *Machine {
	return At(t, t.TempDir())
}

// At boots a machine on existing TPM state (e.g. swtpmtest.Manufacture's).
func At(t *testing.T, state string) *Machine {
	m := &Machine{T: t, State: state}
	m.Boot()
	return m
}

// Boot power-cycles the TPM: PCRs and transients reset, NV and persistent
// objects kept.
func (m *Machine) Boot() {
	m.T.Helper()
	if m.TPM != nil {
		m.Dev.Close()
		m.TPM.Stop()
	}
	m.TPM = swtpmtest.StartState(m.T, m.State)
	dev, err := tpmdev.Open("unix:" + m.TPM.Socket)
	if err != nil {
		m.T.Fatal(err)
	}
	m.Dev = dev
	m.T.Cleanup(func() { dev.Close() })
	m.Cnt = tpmdev.NewCounter(dev)
}
