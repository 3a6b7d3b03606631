package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"patela/init/agentcfg"
	"patela/init/tpmdev"
	"patela/init/vault"
	"patela/internal/api"
)

// unmeasuredWarning is printed at every boot of an unmeasured image.
const unmeasuredWarning = "SEALING UNMEASURED: the relay keys are sealed to PCR 15 and the configured pcrs only; " +
	"whoever holds this machine can boot another OS and unseal them. Lab and test images only: " +
	`production images say "sealing": "release" with a policy_key`

// releasePolicy reports the sealing mode to the server and, sealing to
// the release policy key, fetches the approval of the release this boot
// measured. Nil in unmeasured sealing.
func (a *agent) releasePolicy(ctx context.Context) (*vault.ReleasePolicy, error) {
	client := a.client
	tok, err := a.sess.Token(ctx)
	if err != nil {
		return nil, err
	}
	if a.cfg.Sealing == agentcfg.SealingUnmeasured {
		// The warning was printed at the config phase.
		_, err := client.Release(ctx, tok, &api.ReleaseRequest{Sealing: agentcfg.SealingUnmeasured})
		if api.IsCode(err, api.CodeNotFound) {
			a.log.Warn("the config server is older than this agent: it cannot record the sealing mode")
			err = nil
		}
		return nil, err
	}
	key, err := a.cfg.ReleaseKey()
	if err != nil {
		return nil, err
	}
	pcrs, err := vault.ReadPCRs(a.tpm)
	if err != nil {
		return nil, err
	}
	rsp, err := client.Release(ctx, tok, &api.ReleaseRequest{Sealing: agentcfg.SealingRelease, PCRs: pcrs})
	var measured []string
	for _, n := range []int{4, 11, 12, 13} {
		measured = append(measured, fmt.Sprintf("PCR %d %s", n, pcrs[n].String()[:16]))
	}
	sort.Strings(measured)
	switch e, _ := api.AsError(err); {
	case err == nil && rsp.Release == nil:
		return nil, errors.New("the config server answered without a release approval")
	case err == nil:
		a.log.Info("measured boot: approved release", "release", rsp.Release.Name, "kind", rsp.Release.Kind,
			"policy_pcrs", rsp.Release.Policy.PCRs)
		return &vault.ReleasePolicy{Key: key, Approval: rsp.Release}, nil
	case e != nil && (e.Code == api.CodeReleaseRetired || e.Code == api.CodeReleaseUnknown):
		return nil, fmt.Errorf("measured boot: this image cannot unseal the relay keys: %s (this boot: %s)", e.Message, strings.Join(measured, ", "))
	case e != nil && e.Code == api.CodeNotFound:
		return nil, errors.New("measured boot: the config server is older than this agent and serves no release approvals (POST " + api.PathRelease + ")")
	}
	return nil, fmt.Errorf("measured boot: fetching the release approval: %w", err)
}

// lockForShell extends the vault's lock PCR before a debug shell starts:
// whatever the shell does, nothing in this boot can unseal the vault key,
// sealed to release or unmeasured.
func (a *agent) lockForShell() error {
	if a.tpm == nil {
		t, err := tpmdev.Open(a.cfg.TPM)
		if err != nil {
			return err
		}
		a.tpm = t
	}
	return vault.Lock(a.tpm)
}
