package attest

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"patela/init/tpmkeys"
	"patela/internal/api"
	"patela/internal/pcr"
)

// EventLogPath is where Linux exposes the firmware's TCG event log
// (securityfs, mounted by the agent).
const EventLogPath = "/sys/kernel/security/tpm0/binary_bios_measurements"

// Quote makes the boot evidence for a server nonce: TPM2_Quote by ak over
// the SHA-256 PCRs api.QuotePCRs, the PCR values, and the firmware event
// log (ReadEventLog; nil: none). The values are read around the quote and
// must hash to its digest, so a PCR extended meanwhile (the vault's lock)
// costs a retry, never a wrong quote.
func Quote(t transport.TPM, ak *tpmkeys.Key, nonce []byte, log []byte) (*api.Quote, error) {
	if len(nonce) == 0 || len(nonce) > sha256.Size {
		return nil, fmt.Errorf("nonce of %d bytes: want 1-%d", len(nonce), sha256.Size)
	}
	sel := Selection(api.QuotePCRs)
	for try := 0; try < 3; try++ {
		vals, err := ReadPCRs(t, api.QuotePCRs)
		if err != nil {
			return nil, err
		}
		rsp, err := tpm2.Quote{
			SignHandle:     tpm2.AuthHandle{Handle: ak.Handle, Name: ak.Name, Auth: tpm2.PasswordAuth(nil)},
			QualifyingData: tpm2.TPM2BData{Buffer: nonce},
			InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
			PCRSelect:      sel,
		}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("TPM2_Quote: %w", err)
		}
		att, err := rsp.Quoted.Contents()
		if err != nil {
			return nil, err
		}
		info, err := att.Attested.Quote()
		if err != nil {
			return nil, err
		}
		h := sha256.New()
		for _, n := range api.QuotePCRs {
			v := vals[n]
			h.Write(v[:])
		}
		if !bytes.Equal(h.Sum(nil), info.PCRDigest.Buffer) {
			continue // a PCR changed between the read and the quote
		}
		return &api.Quote{Quoted: rsp.Quoted.Bytes(), Signature: tpm2.Marshal(rsp.Signature), PCRs: vals, EventLog: log}, nil
	}
	return nil, errors.New("the PCRs kept changing while quoting them")
}

// ReadEventLog reads the firmware event log, at most api.MaxEventLog
// bytes; a firmware that keeps none (the file is missing) is no error.
// The firmware wrote it before the kernel started: it never changes.
func ReadEventLog(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("event log: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, api.MaxEventLog+1))
	if err != nil {
		return nil, fmt.Errorf("event log: %w", err)
	}
	if len(b) > api.MaxEventLog {
		return nil, fmt.Errorf("event log %s is larger than %d bytes", path, api.MaxEventLog)
	}
	return b, nil
}

// Selection is the SHA-256 bank selection of pcrs.
func Selection(pcrs []int) tpm2.TPMLPCRSelection {
	u := make([]uint, len(pcrs))
	for i, n := range pcrs {
		u[i] = uint(n)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(u...),
	}}}
}

// ReadPCRs reads SHA-256 PCRs. TPM2_PCR_Read answers at most eight
// digests a call, fewer when it chooses: ask again for the rest.
func ReadPCRs(t transport.TPM, pcrs []int) (map[int]pcr.Value, error) {
	out := make(map[int]pcr.Value, len(pcrs))
	want := append([]int(nil), pcrs...)
	for len(want) > 0 {
		rsp, err := tpm2.PCRRead{PCRSelectionIn: Selection(want)}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("TPM2_PCR_Read: %w", err)
		}
		got := rsp.PCRSelectionOut.PCRSelections
		if len(got) != 1 || len(rsp.PCRValues.Digests) == 0 {
			return nil, errors.New("the TPM has no active SHA-256 bank")
		}
		i := 0
		var rest []int
		for _, n := range want {
			m := got[0].PCRSelect
			if n/8 < len(m) && m[n/8]&(1<<(n%8)) != 0 && i < len(rsp.PCRValues.Digests) {
				d := rsp.PCRValues.Digests[i].Buffer
				i++
				if len(d) != sha256.Size {
					return nil, fmt.Errorf("PCR %d: %d-byte SHA-256 value", n, len(d))
				}
				var v pcr.Value
				copy(v[:], d)
				out[n] = v
				continue
			}
			rest = append(rest, n)
		}
		if len(rest) == len(want) {
			return nil, fmt.Errorf("the TPM returned none of PCRs %v", want)
		}
		want = rest
	}
	return out, nil
}
