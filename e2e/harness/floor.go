package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"patela/internal/layout"
	"patela/internal/torrc"
)

// FloorTorrc is the server side of every floor relay's torrc: the e2e
// global torrc and the lines the config server writes for relay i (the
// agent's own lines are added as the agent adds them).
func FloorTorrc(name string, i int) string {
	addr := fmt.Sprintf("192.0.2.%d", 10+i)
	return GlobalTorrc + "Nickname " + name + "\nORPort " + addr + ":9001\nAddress " + addr + "\nOutboundBindAddress " + addr + "\n"
}

// FloorImage builds the boot floor's image for n relays: e2e/cmd/floorinit
// as /init with the agent image's tor and libraries (InitImage), and per
// relay /floor/NAME/torrc (what the agent would run: torrc.ForNode with
// the agent's lines) and /floor/NAME/data with keys made beforehand on
// this host by running the same torrc once.
func FloorImage(ctx context.Context, kernel *Kernel, dir string, n int) (string, error) {
	work := filepath.Join(dir, "keys")
	var files []File
	var mu sync.Mutex
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("floor%d", i+1)
			f, err := floorRelay(ctx, filepath.Join(work, name), name, i)
			mu.Lock()
			files = append(files, f...)
			mu.Unlock()
			errs[i] = err
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return "", err
		}
	}
	img, _, err := InitImage(ctx, InitImageOptions{Kernel: kernel, Dir: dir, InitPkg: "patela/e2e/cmd/floorinit", Files: files})
	return img, err
}

// floorRelay runs relay name's torrc with host paths under dir until tor
// has written every key, and returns the relay's files for the image.
func floorRelay(ctx context.Context, dir, name string, i int) ([]File, error) {
	server, err := torrc.Parse([]byte(FloorTorrc(name, i)))
	if err != nil {
		return nil, err
	}
	// floorinit runs relay i as uid 10001+i, as allocation numbers them.
	metrics := layout.MetricsAddr(10001 + i)
	render := func(data, control string) []byte {
		run, _ := torrc.ForNode(server, torrc.AgentLines(data, control, metrics))
		return run.Render()
	}
	data, run := filepath.Join(dir, "data"), filepath.Join(dir, "run")
	for _, d := range []string{data, run} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	// The keys are made by tor itself on this host, master key included:
	// without the agent's OfflineMasterKey 1, which the guest's torrc keeps
	// (the image holds the signing key and certificate, not the master
	// secret, as the agent's relays do).
	keygen, _ := torrc.ForNode(server, torrc.AgentLines(data, filepath.Join(run, "control"), metrics))
	keygen.Lines = slices.DeleteFunc(keygen.Lines, func(l torrc.Line) bool { return l.Key == "OfflineMasterKey" })
	hostTorrc := filepath.Join(dir, "torrc")
	if err := os.WriteFile(hostTorrc, keygen.Render(), 0o644); err != nil {
		return nil, err
	}
	tctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(tctx, "/usr/bin/tor", "--defaults-torrc", "/dev/null", "-f", hostTorrc)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	keys := filepath.Join(data, "keys")
	want := []string{"secret_id_key", "ed25519_master_id_secret_key", "ed25519_signing_cert", "ed25519_signing_secret_key",
		"secret_onion_key", "secret_onion_key_ntor"}
	for {
		have := 0
		for _, k := range want {
			if _, err := os.Stat(filepath.Join(keys, k)); err == nil {
				have++
			}
		}
		if have == len(want) {
			break
		}
		if tctx.Err() != nil {
			cmd.Process.Kill()
			cmd.Wait()
			return nil, fmt.Errorf("floor relay %s: tor wrote no full key set within a minute:\n%s", name, out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // tor renames each key file into place; let the last one settle
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()

	guest := filepath.Join("floor", name)
	files := []File{{Name: filepath.Join(guest, "torrc"), Data: render("/"+filepath.Join(guest, "data"),
		filepath.Join(layout.RunDir, name, "control")), Mode: 0o644}}
	ents, err := os.ReadDir(keys)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		if !e.Type().IsRegular() || e.Name() == "ed25519_master_id_secret_key" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(keys, e.Name()))
		if err != nil {
			return nil, err
		}
		files = append(files, File{Name: filepath.Join(guest, "data", "keys", e.Name()), Data: b, Mode: 0o600})
	}
	return files, nil
}
