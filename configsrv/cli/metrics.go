package cli

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"time"

	"patela/configsrv/httpapi"
	"patela/configsrv/metrics"
	"patela/configsrv/store"
)

// metricsFlag defines serve's --metrics-listen.
func metricsFlag(fs *flag.FlagSet) *string {
	return fs.String("metrics-listen", "", "serve Prometheus metrics over plain HTTP on `ADDR` (host:port; a bare :port is 127.0.0.1); default off")
}

// metricsAddr is where --metrics-listen ADDR listens: loopback unless
// ADDR names another host.
func metricsAddr(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("--metrics-listen %q: %w", addr, err)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}

// startMetrics serves st's metrics on addr ("" is off) until stop is
// called, and returns the observer the API reports its requests to (nil
// when off).
func (e *env) startMetrics(st *store.Store, addr string) (obs httpapi.Observer, stop func(), err error) {
	if addr == "" {
		return nil, func() {}, nil
	}
	addr, err = metricsAddr(addr)
	if err != nil {
		return nil, nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("--metrics-listen: %w", err)
	}
	if ip := ln.Addr().(*net.TCPAddr).IP; !ip.IsLoopback() {
		fmt.Fprintf(e.stderr, "configsrv: warning: metrics on %s, not loopback: whoever reaches it reads every node's and relay's figures\n", ln.Addr())
	}
	exp := metrics.New(st)
	srv := &http.Server{Handler: exp.Handler(), ReadHeaderTimeout: 10 * time.Second, WriteTimeout: 60 * time.Second,
		IdleTimeout: 120 * time.Second, MaxHeaderBytes: 16 << 10}
	go func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintf(e.stderr, "configsrv: metrics server: %v\n", err)
		}
	}()
	fmt.Fprintf(e.stderr, "configsrv: metrics on http://%s%s\n", ln.Addr(), metrics.Path)
	return exp, func() { srv.Close() }, nil
}
