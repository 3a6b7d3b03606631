// Command stdiorelay joins its standard input and output to one TCP
// connection. QEMU's guestfwd runs it per guest connection, so the guest
// reaches exactly one host service (the config server on loopback) and
// nothing else:
//
//	-netdev user,restrict=on,guestfwd=tcp:10.0.2.100:443-cmd:stdiorelay 127.0.0.1:PORT
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: stdiorelay HOST:PORT")
		os.Exit(2)
	}
	c, err := net.DialTimeout("tcp", os.Args[1], 10*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, "stdiorelay:", err)
		os.Exit(1)
	}
	done := make(chan struct{}, 2)
	go func() {
		io.Copy(c, os.Stdin)
		c.(*net.TCPConn).CloseWrite()
		done <- struct{}{}
	}()
	go func() {
		io.Copy(os.Stdout, c)
		os.Stdout.Close()
		done <- struct{}{}
	}()
	// Either side closing ends the relay: the guest's connection is gone
	// or the server hung up.
	<-done
	c.Close()
}
