// Command stimage builds, signs and verifies System Transparency OS
// packages and the UKIs of measured boot. Its commands and files mirror
// stmgr's, so stboot users find their way; flags also answer to stmgr's
// spelling (-isCA, -rootCert, -certOut, ...). `stimage help` lists the
// commands (the table below), `stimage COMMAND --help` a command's flags.
package main

import (
	"io"
	"os"

	"patela/internal/cmdline"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

// env is what a command writes to.
type env struct{ out io.Writer }

// program is stimage's command line. A new command is one row here and
// one function that defines its flags, calls parse, then does its work.
var program = &cmdline.Program[*env]{
	Name: "stimage",
	Commands: []cmdline.Command[*env]{
		{Words: "keygen certificate", Help: "a self-signed root certificate (--is-ca), or a signing certificate the root issues", Run: keygenCertificate},
		{Words: "keygen policy-key", Help: "a new release policy key (ECDSA P-256); never overwrites one", Run: keygenPolicyKey},
		{Words: "ospkg create", Args: "--out NAME --kernel FILE --initramfs FILE", Help: "write an unsigned OS package: NAME.zip and its descriptor NAME.json", Run: ospkgCreate},
		{Words: "ospkg sign", Args: "--key FILE --cert FILE --ospkg NAME", Help: "add a signature to the package's descriptor", Run: ospkgSign},
		{Words: "ospkg verify", Args: "(--trust-policy DIR | --root-certs FILE) --ospkg NAME", Help: "check the package's signatures as stboot would", Run: ospkgVerify},
		{Words: "ospkg extract", Args: "(--trust-policy DIR | --root-certs FILE) --ospkg NAME --out DIR", Help: "verify, then write the kernel, initramfs and cmdline stboot would boot", Run: ospkgExtract},
		{Words: "ospkg pcrs", Args: "--ospkg NAME --trust-policy DIR", Help: "verify, then predict the PCR 12 and 13 stboot measures for the package", Run: ospkgPcrs},
		{Words: "uki create", Args: "--kernel FILE --initramfs FILE --os-release FILE --out FILE", Help: "build a reproducible UKI on systemd-stub", Run: ukiCreate},
		{Words: "uki pcrs", Args: "UKI", Help: "predict the PCR 4, 11 and 12 a UKI is measured into", Run: ukiPcrs},
		{Words: "release create", Args: "--name NAME --out FILE (--uki FILE | --ospkg NAME --trust-policy DIR --anchor-pcr N=HEX...)", Help: "a release record: artifact hashes, expected PCRs, policy digest; approved at once with --key", Run: releaseCreate},
		{Words: "release approve", Args: "--key FILE --release FILE", Help: "sign a release record's policy digest with the release policy key", Run: releaseApprove},
		{Words: "trustpolicy check", Args: "(JSON | FILE)", Help: "check a stboot trust_policy.json and print it as stboot reads it", Run: trustpolicyCheck},
		{Words: "hostconfig check", Args: "(JSON | FILE)", Help: "check a stboot host_config.json and print it as stboot reads it", Run: hostconfigCheck},
	},
	Footer: "Exit status: 0 done, 1 failed, 2 usage error.\n",
}

// run runs the command line and returns the exit status.
func run(args []string) int {
	return program.Main(&env{out: os.Stdout}, args, os.Stdout, os.Stderr)
}
