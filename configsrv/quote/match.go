package quote

import (
	"crypto/sha256"
	"encoding/hex"
	"sort"

	"patela/internal/pcr"
	"patela/internal/release"
)

// Match returns the release among rels whose expected PCRs the quoted
// ones show, or nil. Every PCR a release names must hold its expected
// value, except the lock PCR, which reads zero before the agent opens the
// vault and release.Locked() after (a token refresh later in the boot
// quotes it locked); any other value there means something else extended
// it, and no release matches.
func Match(rels []*release.Release, quoted map[int]pcr.Value) *release.Release {
	for _, r := range rels {
		if matches(r, quoted) {
			return r
		}
	}
	return nil
}

func matches(r *release.Release, quoted map[int]pcr.Value) bool {
	if len(r.PCRs) == 0 {
		return false
	}
	for n, want := range r.PCRs {
		have, ok := quoted[n]
		if !ok {
			return false
		}
		if n == release.LockPCR && want.IsZero() && have == release.Locked() {
			continue
		}
		if have != want {
			return false
		}
	}
	return true
}

// Digest is one line naming a PCR state, for logs and refusals: SHA-256
// over the quoted values in index order, hex.
func Digest(pcrs map[int]pcr.Value) string {
	h := sha256.New()
	keys := make([]int, 0, len(pcrs))
	for n := range pcrs {
		keys = append(keys, n)
	}
	sort.Ints(keys)
	for _, n := range keys {
		v := pcrs[n]
		h.Write(v[:])
	}
	return hex.EncodeToString(h.Sum(nil))
}
