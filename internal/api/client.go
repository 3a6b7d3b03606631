package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// maxResponse bounds what the client reads of a successful answer.
const maxResponse = 4 << 20

// Client speaks the v1 protocol to a config server. It holds no token:
// callers pass the bearer token per call, so re-attestation never races.
type Client struct {
	BaseURL string
	HTTP    *http.Client
}

// NewClient returns a client that trusts only the CA certificates in caPEM
// and speaks TLS 1.3 only. An empty caPEM uses the system roots.
func NewClient(baseURL string, caPEM []byte) (*Client, error) {
	// Session tickets: a parked config request is answered with
	// Connection: close, and resuming is cheaper than a full handshake.
	// Full-size records from the first: TLS starts a connection with
	// records of one TCP segment so a browser can render early bytes, and
	// writes each with a system call of its own; an agent's request is
	// read whole (a boot's completion is five records otherwise).
	tc := &tls.Config{MinVersion: tls.VersionTLS13, ClientSessionCache: tls.NewLRUClientSessionCache(4),
		DynamicRecordSizingDisabled: true}
	if len(caPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, errors.New("server CA: no PEM certificate found")
		}
		tc.RootCAs = pool
	}
	tr := &http.Transport{
		TLSClientConfig:     tc,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
		// A completion with its quote and event log (~7 KiB) in one write,
		// not two: a TLS record and a system call fewer on each side.
		WriteBufferSize: 16 << 10,
		// HTTP/1.1: a held config request then costs the server a parked
		// connection rather than an HTTP/2 stream's goroutines and buffers
		// (docs/protocol.md, "Long poll").
	}
	return &Client{
		BaseURL: strings.TrimRight(baseURL, "/"),
		HTTP:    &http.Client{Transport: tr, Timeout: 30 * time.Second},
	}, nil
}

// Attest starts credential activation.
func (c *Client) Attest(ctx context.Context, req *AttestRequest) (*AttestResponse, error) {
	var out AttestResponse
	return &out, c.do(ctx, http.MethodPost, PathAttest, "", req, &out)
}

// Complete returns the activated secret and receives a token.
func (c *Client) Complete(ctx context.Context, req *CompleteRequest) (*CompleteResponse, error) {
	var out CompleteResponse
	return &out, c.do(ctx, http.MethodPost, PathAttestComplete, "", req, &out)
}

// Specs reports the node's hardware; the server sizes its relays from it.
func (c *Client) Specs(ctx context.Context, token string, s *Specs) (*SpecsResponse, error) {
	var out SpecsResponse
	return &out, c.do(ctx, http.MethodPost, PathSpecs, token, s, &out)
}

// Config fetches the node's desired state.
func (c *Client) Config(ctx context.Context, token string) (*NodeConfig, error) {
	var out NodeConfig
	return &out, c.do(ctx, http.MethodGet, PathConfig, token, nil, &out)
}

// GetKeys fetches the key-bundle ciphertext mirror. A node without one gets
// an *Error with CodeNotFound.
func (c *Client) GetKeys(ctx context.Context, token string) (*KeyBundle, error) {
	var out KeyBundle
	return &out, c.do(ctx, http.MethodGet, PathKeys, token, nil, &out)
}

// PutKeys stores a newer key-bundle ciphertext.
func (c *Client) PutKeys(ctx context.Context, token string, b *KeyBundle) error {
	return c.do(ctx, http.MethodPut, PathKeys, token, b, nil)
}

// Status sends a heartbeat.
func (c *Client) Status(ctx context.Context, token string, s *Status) error {
	return c.do(ctx, http.MethodPost, PathStatus, token, s, nil)
}

func (c *Client) do(ctx context.Context, method, path, token string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return readError(resp)
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		io.Copy(io.Discard, io.LimitReader(resp.Body, MaxBody))
		return nil
	}
	// Responses (a node config with many relays can be large) are decoded
	// leniently about unknown fields so a newer
	// server can add some; size is still capped.
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxResponse)).Decode(out); err != nil {
		return fmt.Errorf("%s %s: bad response: %w", method, path, err)
	}
	return nil
}

// readError reads a non-2xx answer as an *Error.
func readError(resp *http.Response) error {
	e := &Error{Status: resp.StatusCode}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, MaxBody))
	if json.Unmarshal(data, e) != nil || e.Code == "" {
		e.Code = ErrorCode(http.StatusText(resp.StatusCode))
		e.Message = strings.TrimSpace(string(data))
	}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
		e.RetryAfter = time.Duration(s) * time.Second
	}
	return e
}
