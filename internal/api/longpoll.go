package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
)

// LongPollSlack is how much longer than the wait it asked for the client
// gives a held config request before it gives up on the server.
const LongPollSlack = 30 * time.Second

// ConfigResult is a conditional config fetch.
type ConfigResult struct {
	// Config is the node's desired state; nil when the server answered
	// 304: the config is still the one etag names.
	Config *NodeConfig
	// ETag names Config (or the unchanged config). Empty: the server does
	// not tag configs, so it does not long-poll either (an older server);
	// the node polls every poll_interval_s instead.
	ETag string
}

// ConfigWait fetches the node's config if it differs from the one etag
// names (any config when etag is ""), waiting up to wait for it to change
// (docs/protocol.md, "Long poll"). A server that does not long-poll
// answers at once, with the config and no ETag.
func (c *Client) ConfigWait(ctx context.Context, token, etag string, wait time.Duration) (*ConfigResult, error) {
	path := PathConfig
	hc := c.HTTP
	if etag != "" && wait > 0 {
		path += "?wait=" + strconv.FormatInt(int64(wait/time.Second), 10)
		// The client's own timeout is for ordinary requests.
		hc = &http.Client{Transport: c.HTTP.Transport}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, wait+LongPollSlack)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.BaseURL+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	r := &ConfigResult{ETag: resp.Header.Get("ETag")}
	switch {
	case resp.StatusCode == http.StatusNotModified:
		if r.ETag == "" {
			r.ETag = etag
		}
		return r, nil
	case resp.StatusCode/100 != 2:
		return nil, readError(resp)
	}
	var cfg NodeConfig
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxResponse)).Decode(&cfg); err != nil {
		return nil, fmt.Errorf("GET %s: bad response: %w", PathConfig, err)
	}
	r.Config = &cfg
	return r, nil
}
