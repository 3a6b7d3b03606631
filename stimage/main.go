// Command stimage builds, signs and verifies System Transparency OS
// packages. Its commands and files mirror stmgr's, so stboot users find
// their way:
//
//	stimage keygen certificate --is-ca [--cert-out rootcert.pem --key-out rootkey.pem]
//	stimage keygen certificate --root-cert rootcert.pem --root-key rootkey.pem [--leaf-key K] [--cert-out cert.pem --key-out key.pem]
//	stimage keygen policy-key [--key-out policy.key --pub-out policy.pub]
//	stimage ospkg create --out NAME --kernel vmlinuz --initramfs initramfs.cpio.gz [--label L --url U --cmdline C]
//	stimage ospkg sign --key key.pem --cert cert.pem --ospkg NAME
//	stimage ospkg verify (--trust-policy DIR | --root-certs FILE) --ospkg NAME
//	stimage ospkg extract (--trust-policy DIR | --root-certs FILE) --ospkg NAME --out DIR
//	stimage ospkg pcrs --ospkg NAME --trust-policy DIR [--tls-roots FILE] [--json]
//	stimage uki create --kernel K --initramfs I --cmdline C --os-release F --out U [--stub S]
//	stimage uki pcrs [--boot entry|direct] [--json] U
//	stimage release create --name N --out R.json (--uki U [--boot entry|direct] | --ospkg NAME --trust-policy DIR --anchor-pcr N=HEX...) [--key policy.key]
//	stimage release approve --key policy.key --release R.json
//	stimage trustpolicy check JSON|FILE
//	stimage hostconfig check JSON|FILE
//
// Flags also answer to stmgr's spelling (-isCA, -rootCert, -certOut, ...).
package main

import (
	"fmt"
	"os"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

type command struct {
	name, sub string
	run       func(args []string) error
}

var commands = []command{
	{"keygen", "certificate", keygenCertificate},
	{"keygen", "policy-key", keygenPolicyKey},
	{"ospkg", "create", ospkgCreate},
	{"ospkg", "sign", ospkgSign},
	{"ospkg", "verify", ospkgVerify},
	{"ospkg", "extract", ospkgExtract},
	{"ospkg", "pcrs", ospkgPcrs},
	{"uki", "create", ukiCreate},
	{"uki", "pcrs", ukiPcrs},
	{"release", "create", releaseCreate},
	{"release", "approve", releaseApprove},
	{"trustpolicy", "check", trustpolicyCheck},
	{"hostconfig", "check", hostconfigCheck},
}

func run(args []string) int {
	if len(args) >= 2 {
		for _, c := range commands {
			if c.name == args[0] && c.sub == args[1] {
				if err := c.run(args[2:]); err != nil {
					fmt.Fprintf(os.Stderr, "stimage %s %s: %v\n", c.name, c.sub, err)
					return 1
				}
				return 0
			}
		}
	}
	fmt.Fprintln(os.Stderr, "usage: stimage COMMAND SUBCOMMAND [flags]; commands:")
	for _, c := range commands {
		fmt.Fprintf(os.Stderr, "  stimage %s %s\n", c.name, c.sub)
	}
	return 2
}
