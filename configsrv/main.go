// Command configsrv is the patela config and attestation server and its
// admin CLI. Run `configsrv help` for the commands.
package main

import (
	"os"

	"patela/configsrv/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
