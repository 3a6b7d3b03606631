package httpapi_test

import (
	"context"
	"fmt"
	"testing"

	"patela/configsrv/attest"
	"patela/internal/api"
)

// The server remembers an EK's node as enabled, so a change an
// administrator makes from another process (the CLI writes the database;
// here, the store directly) is found by the completion's transaction: a
// node disabled, banned or removed since its last attestation gets a
// challenge but no token, nothing is recorded, and its next attestation
// is refused at once as before.
func TestAttestAfterAdminChange(t *testing.T) {
	l := newLocal(t, nil)
	ctx := context.Background()
	id, ek, ak := l.enroll(t)
	_, akName, _ := attest.ParseAK(ak)
	req := &api.AttestRequest{EKPublic: ek.Public, AKPublic: ak}
	handshake := func() (*api.CompleteResponse, error) {
		ch, err := l.client.Attest(ctx, req)
		if err != nil {
			return nil, err
		}
		secret, err := ek.Activate(ch.CredentialBlob, ch.EncryptedSecret, akName)
		if err != nil {
			t.Fatal(err)
		}
		return l.client.Complete(ctx, &api.CompleteRequest{ChallengeID: ch.ChallengeID, Secret: secret})
	}
	attestedAt := func() string {
		var at any
		l.st.DB().QueryRow(`SELECT attested_at FROM nodes WHERE id = ?`, id).Scan(&at)
		return fmt.Sprint(at)
	}
	if _, err := handshake(); err != nil {
		t.Fatal(err)
	}
	for _, st := range []api.NodeState{api.NodeDisabled, api.NodeBanned} {
		if err := l.st.SetNodeState(ctx, id, st); err != nil {
			t.Fatal(err)
		}
		before, audit := attestedAt(), countRows(t, l.st, "audit WHERE action = 'attest.ok'")
		if resp, err := handshake(); !api.IsCode(err, st.RefusalCode()) {
			t.Errorf("%s since its last attestation: %+v, %v; want %s", st, resp, err, st.RefusalCode())
		}
		if attestedAt() != before || countRows(t, l.st, "audit WHERE action = 'attest.ok'") != audit {
			t.Errorf("%s: the refused completion was recorded", st)
		}
		if _, err := l.client.Attest(ctx, req); !api.IsCode(err, st.RefusalCode()) {
			t.Errorf("%s: the next attestation: %v, want %s at once", st, err, st.RefusalCode())
		}
		if err := l.st.SetNodeState(ctx, id, api.NodeEnabled); err != nil {
			t.Fatal(err)
		}
		if _, err := handshake(); err != nil {
			t.Fatalf("enabled again: %v", err)
		}
	}
	if err := l.st.RemoveNode(ctx, id); err != nil {
		t.Fatal(err)
	}
	if resp, err := handshake(); !api.IsCode(err, api.CodeChallengeExpired) {
		t.Errorf("removed since its last attestation: %+v, %v; want 410 challenge_expired", resp, err)
	}
	if n := countRows(t, l.st, fmt.Sprintf("nodes WHERE id = %d", id)); n != 0 {
		t.Errorf("the removed node is back: %d rows", n)
	}
	// Attesting again, the EK is new to the server: a pending node.
	if _, err := l.client.Attest(ctx, req); !api.IsCode(err, api.CodePending) {
		t.Errorf("after removal: %v, want pending", err)
	}
}
