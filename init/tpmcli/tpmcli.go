// Package tpmcli is the agent's TPM tool for operators on a live node
// (`init tpm …` when the agent does not run as PID 1).
package tpmcli

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"patela/init/tpmdev"
	"patela/init/tpmkeys"
	"patela/init/vault"
	"patela/internal/cmdline"
)

// env is what the commands share: the TPM device and the output.
type env struct {
	dev    string
	stdout io.Writer
}

// program is the `init tpm` command line: one row per command.
var program = &cmdline.Program[*env]{
	Name:    "init tpm",
	Globals: func(e *env, fs *flag.FlagSet) { deviceFlag(e, fs) },
	Commands: []cmdline.Command[*env]{
		{Words: "info", Help: "manufacturer, firmware, EK, AK, vault and NV state", Run: (*env).info},
		{Words: "ek", Help: "print the EK's identity (the node's key at the config server; what --ek-allowlist takes)", Run: (*env).ek},
		{Words: "clear-vault", Args: "--yes", Help: "delete the vault (sealed key and key bundle) from the TPM: every relay gets a new identity on the next boot", Run: (*env).clearVault},
	},
	Footer: `Without --rsa or --ecc the EK is the one the agent uses: ECC P-256 unless
the TPM only has an RSA EK certificate.
Exit status: 0 done, 1 failed, 2 usage error.
`,
}

// deviceFlag defines --tpm, taken before the command and after it.
func deviceFlag(e *env, fs *flag.FlagSet) {
	fs.StringVar(&e.dev, "tpm", e.dev, "TPM `DEVICE`: /dev/tpmrm0, unix:/path/to/swtpm-sock or tcp:HOST:PORT")
}

// Main runs the CLI on args (with or without a leading "tpm") and returns
// the exit status.
func Main(args []string) int {
	return Run(args, os.Stdout, os.Stderr)
}

// Run is Main with explicit output streams.
func Run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "tpm" {
		args = args[1:]
	}
	return program.Main(&env{dev: tpmdev.Default, stdout: stdout}, args, stdout, stderr)
}

// openEK parses a command that takes no arguments, --tpm and the EK
// choice (--rsa, --ecc, else the EK the agent uses), and opens the TPM.
func (e *env) openEK(fs *flag.FlagSet, args []string) (transport.TPMCloser, tpm2.TPMAlgID, error) {
	deviceFlag(e, fs)
	rsa := fs.Bool("rsa", false, "use the RSA-2048 EK")
	ecc := fs.Bool("ecc", false, "use the ECC P-256 EK")
	if _, err := cmdline.Parse(fs, args, 0, 0); err != nil {
		return nil, 0, err
	}
	var alg tpm2.TPMAlgID
	switch {
	case *rsa && *ecc:
		return nil, 0, cmdline.Usagef("--rsa and --ecc exclude each other")
	case *rsa:
		alg = tpm2.TPMAlgRSA
	case *ecc:
		alg = tpm2.TPMAlgECC
	}
	t, err := tpmdev.Open(e.dev)
	if err != nil {
		return nil, 0, err
	}
	if alg == 0 {
		if alg, err = tpmkeys.ChooseEK(t); err != nil {
			t.Close()
			return nil, 0, fmt.Errorf("choosing the EK: %w", err)
		}
	}
	return t, alg, nil
}

func (e *env) ek(fs *flag.FlagSet, args []string) error {
	t, alg, err := e.openEK(fs, args)
	if err != nil {
		return err
	}
	defer t.Close()
	k, err := tpmkeys.EK(t, alg)
	if err != nil {
		return err
	}
	k.Close(t)
	id, err := tpmkeys.Identity(k.Public)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(e.stdout, id)
	return err
}

func (e *env) info(fs *flag.FlagSet, args []string) error {
	t, alg, err := e.openEK(fs, args)
	if err != nil {
		return err
	}
	defer t.Close()
	p := func(k, format string, a ...any) {
		fmt.Fprintf(e.stdout, "%-16s"+format+"\n", append([]any{k}, a...)...)
	}
	p("device", "%s", e.dev)
	infoFirmware(t, p)
	if err := infoEK(t, p, alg); err != nil {
		return err
	}
	if err := infoAK(t, p); err != nil {
		return err
	}
	return infoVault(t, p)
}

// printer prints one "key  value" line of tpm info.
type printer func(k, format string, a ...any)

func vendorString(v uint32) string {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return strings.TrimRight(strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return -1
		}
		return r
	}, string(b[:])), " ")
}

func infoFirmware(t transport.TPM, p printer) {
	if v, err := tpmdev.Property(t, tpm2.TPMPTManufacturer); err == nil {
		p("manufacturer", "%s (0x%08x)", vendorString(v), v)
	} else {
		p("manufacturer", "unknown (%v)", err)
	}
	f1, err1 := tpmdev.Property(t, tpm2.TPMPTFirmwareVersion1)
	f2, err2 := tpmdev.Property(t, tpm2.TPMPTFirmwareVersion2)
	if err := errors.Join(err1, err2); err == nil {
		p("firmware", "%d.%d.%d.%d (0x%08x 0x%08x)", f1>>16, f1&0xffff, f2>>16, f2&0xffff, f1, f2)
	}
}

func infoEK(t transport.TPM, p printer, alg tpm2.TPMAlgID) error {
	k, err := tpmkeys.EK(t, alg)
	if err != nil {
		return fmt.Errorf("EK: %w", err)
	}
	k.Close(t)
	id, err := tpmkeys.Identity(k.Public)
	if err != nil {
		return fmt.Errorf("EK: %w", err)
	}
	where := "derived from the TCG template"
	if !k.Transient {
		where = fmt.Sprintf("persisted at 0x%08x", uint32(k.Handle))
	}
	p("EK", "%s, %s", map[tpm2.TPMAlgID]string{tpm2.TPMAlgECC: "ECC P-256", tpm2.TPMAlgRSA: "RSA-2048"}[alg], where)
	p("EK identity", "%s", id)
	p("EK name", "%x", k.Name.Buffer)
	cert, err := tpmkeys.EKCertificate(t, alg)
	switch {
	case err != nil:
		p("EK certificate", "unreadable: %v", err)
	case cert == nil:
		p("EK certificate", "none in NV")
	default:
		p("EK certificate", "%d bytes in NV", len(cert))
	}
	return nil
}

func infoAK(t transport.TPM, p printer) error {
	ak, err := tpmkeys.Persisted(t, tpmkeys.AKHandle)
	switch {
	case errors.Is(err, tpmkeys.ErrNotPersisted):
		p("AK", "none at 0x%08x (created at the first attestation)", uint32(tpmkeys.AKHandle))
	case err != nil:
		return fmt.Errorf("AK: %w", err)
	case !tpmkeys.Matches(ak.Public, tpmkeys.AKTemplate):
		p("AK", "0x%08x holds an object that is not a patela AK (replaced at the next attestation)", uint32(tpmkeys.AKHandle))
	default:
		p("AK", "0x%08x, name %x", uint32(tpmkeys.AKHandle), ak.Name.Buffer)
	}
	return nil
}

func infoVault(t transport.TPM, p printer) error {
	st, err := vault.Inspect(t)
	if err != nil {
		return fmt.Errorf("vault: %w", err)
	}
	switch {
	case !st.Sealed && !st.Header:
		p("vault", "none (created at the first boot)")
	case !st.Sealed:
		p("vault", "BROKEN: key bundle header present but the sealed key is missing")
	default:
		lock := "none"
		if st.LockPCR >= 0 {
			lock = fmt.Sprint(st.LockPCR)
		}
		switch st.Sealing {
		case "release":
			p("vault", "sealed key at 0x%08x to the release policy key (PolicyAuthorize), lock PCR %s", uint32(tpmkeys.ReleaseSealHandle), lock)
		case "migrating":
			p("vault", "sealed key at 0x%08x (release policy key) and its PolicyPCR copy at 0x%08x (migration not finished)",
				uint32(tpmkeys.ReleaseSealHandle), uint32(tpmkeys.SealHandle))
		default:
			p("vault", "sealed key at 0x%08x, PCRs %v, lock PCR %s (unmeasured sealing)", uint32(tpmkeys.SealHandle), st.PCRs, lock)
		}
		if st.Location == "none" {
			p("key bundle", "none saved yet")
		} else {
			p("key bundle", "version %d, %d bytes, in %s", st.Version, st.Length,
				map[string]string{"nv": "TPM NV", "mirror": "the config server mirror"}[st.Location])
		}
	}
	infoCounter(p, st)
	p("NV", "vault uses %d indices, %d bytes; NV_INDEX_MAX %d, NV_BUFFER_MAX %d",
		st.NVIndices, st.NVBytes, st.IndexMax, st.BufferMax)
	return nil
}

func infoCounter(p printer, st *vault.State) {
	switch {
	case st.CounterForeign:
		p("counter", "BROKEN: NV 0x%08x is not a TPM counter (replaced); the vault refuses its bundle", uint32(tpmkeys.NVCounter))
	case st.CounterWritten:
		p("counter", "rollback counter %d (NV 0x%08x)", st.Counter, uint32(tpmkeys.NVCounter))
	case st.CounterDefined:
		p("counter", "rollback counter defined at NV 0x%08x, no value yet", uint32(tpmkeys.NVCounter))
	default:
		p("counter", "no rollback counter (defined at the next key bundle save)")
	}
}

func (e *env) clearVault(fs *flag.FlagSet, args []string) error {
	deviceFlag(e, fs)
	yes := fs.Bool("yes", false, "confirm: every relay's identity keys held by this TPM are destroyed")
	if _, err := cmdline.Parse(fs, args, 0, 0); err != nil {
		return err
	}
	if !*yes {
		return cmdline.Usagef("this destroys every relay's identity keys held by this TPM; run again with --yes to do it")
	}
	t, err := tpmdev.Open(e.dev)
	if err != nil {
		return err
	}
	defer t.Close()
	w := e.stdout
	st, err := vault.Inspect(t)
	if err != nil {
		return err
	}
	if !st.Sealed && !st.Header && st.NVIndices == 0 && !st.CounterDefined {
		fmt.Fprintln(w, "no vault in this TPM; nothing cleared")
		return nil
	}
	if err := vault.Clear(t); err != nil {
		return err
	}
	fmt.Fprintf(w, "vault cleared: sealed key and %d NV indices (%d bytes) removed; relays start with new identities at the next boot\n",
		st.NVIndices, st.NVBytes)
	if st.Location == "mirror" {
		fmt.Fprintln(w, "the config server still holds the old, now undecryptable bundle: the next boot refuses to replace it until an administrator deletes it on the server with `configsrv keys drop N --yes` (N: this node's id)")
	}
	return nil
}
