package api

import (
	"net/http"
	"testing"
)

// The agent decides from these whether to retry, stop its relays or
// attest again; each code the server sends is classified once, here.
func TestErrorClasses(t *testing.T) {
	for _, c := range []struct {
		code                         ErrorCode
		status                       int
		permanent, revoked, tokenBad bool
	}{
		{CodeBanned, http.StatusForbidden, true, true, false},
		{CodeDisabled, http.StatusForbidden, false, true, false},
		{CodePending, http.StatusForbidden, false, true, false},
		{CodeBadAK, http.StatusBadRequest, true, false, false},
		{CodeBadEK, http.StatusBadRequest, true, false, false},
		{CodeBadRequest, http.StatusBadRequest, true, false, false},
		{CodeEKUntrusted, http.StatusForbidden, false, false, false},
		{CodeUnauthorized, http.StatusUnauthorized, false, false, true},
		{CodeBadSecret, http.StatusUnauthorized, false, false, true},
		{CodeRateLimited, http.StatusTooManyRequests, false, false, false},
		{CodePendingFull, http.StatusTooManyRequests, false, false, false},
		{CodeInternal, http.StatusInternalServerError, false, false, false},
		{CodeExhausted, http.StatusConflict, false, false, false},
	} {
		e := &Error{Code: c.code, Status: c.status}
		if e.Permanent() != c.permanent || e.Revoked() != c.revoked || e.TokenRefused() != c.tokenBad {
			t.Errorf("%s/%d: permanent %v revoked %v token refused %v, want %v %v %v", c.code, c.status,
				e.Permanent(), e.Revoked(), e.TokenRefused(), c.permanent, c.revoked, c.tokenBad)
		}
	}
	for _, st := range NodeStates {
		if st != NodeEnabled && !(&Error{Code: st.RefusalCode(), Status: http.StatusForbidden}).Revoked() {
			t.Errorf("a node refused as %s is not revoked", st)
		}
	}
}
