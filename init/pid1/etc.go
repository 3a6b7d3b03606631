package pid1

import (
	"fmt"
	"os"
	"path/filepath"
)

// WriteEtc writes the accounts every process may look up (root and
// nobody; relay users are added by the tor supervisor), and hostname and
// hosts. /etc/resolv.conf is the DHCP client's: until it has a lease, the
// file is empty rather than naming a public resolver (u-root's base
// ramfs ships 8.8.8.8).
func WriteEtc(root, hostname string) error {
	files := []struct {
		path, data string
		perm       os.FileMode
	}{
		{"/etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n", 0o644},
		{"/etc/group", "root:x:0:\nnogroup:x:65534:\n", 0o644},
		{"/etc/hostname", hostname + "\n", 0o644},
		{"/etc/hosts", fmt.Sprintf("127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t%s\n", hostname), 0o644},
		{"/etc/resolv.conf", "# no DHCP lease yet\n", 0o644},
		{"/etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n", 0o644},
	}
	for _, f := range files {
		p := filepath.Join(root, f.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		// Replace, not truncate: the initramfs may hold a hard link or a
		// read-only copy.
		os.Remove(p)
		if err := os.WriteFile(p, []byte(f.data), f.perm); err != nil {
			return fmt.Errorf("writing %s: %w", p, err)
		}
	}
	return nil
}
