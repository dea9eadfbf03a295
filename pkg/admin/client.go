package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// Client talks to a kmeshd admin API.
type Client struct {
	address string
	base    string
	http    *http.Client
}

// NewClient returns a client for address (host:port or unix:/path).
func NewClient(address string) (*Client, error) {
	if address == "" {
		address = DefaultAddress
	}
	network, addr, err := ParseAddress(address)
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{}
	base := "http://" + addr
	if network == "unix" {
		base = "http://kmeshd"
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", addr)
		}
	}
	return &Client{address: address, base: base, http: &http.Client{Transport: tr, Timeout: 30 * time.Second}}, nil
}

// Get fetches path and decodes the JSON answer into out.
func (c *Client) Get(ctx context.Context, path string, out any) error {
	return c.do(ctx, http.MethodGet, path, nil, out)
}

// Post posts to path with query parameters and decodes the answer into out.
func (c *Client) Post(ctx context.Context, path string, q url.Values, out any) error {
	return c.do(ctx, http.MethodPost, path, q, out)
}

func (c *Client) do(ctx context.Context, method, path string, q url.Values, out any) error {
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return c.explain(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var ae APIError
		if json.Unmarshal(body, &ae) == nil && ae.Error != "" {
			return fmt.Errorf("kmeshd: %s", ae.Error)
		}
		return fmt.Errorf("kmeshd: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	if out == nil {
		return nil
	}
	if s, ok := out.(*string); ok {
		*s = string(body)
		return nil
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("kmeshd: decoding %s: %w", path, err)
	}
	return nil
}

// explain turns transport errors into advice for the usual causes.
func (c *Client) explain(err error) error {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ENOENT):
		return fmt.Errorf("cannot reach the kmeshd admin API at %s: is kmeshd running? (start it with `sudo kmeshd`, or point kmeshctl at it with --admin)", c.address)
	case errors.Is(err, syscall.EACCES):
		return fmt.Errorf("permission denied on the kmeshd admin socket %s: run kmeshctl as root", c.address)
	}
	return fmt.Errorf("kmeshd admin API at %s: %w", c.address, err)
}
