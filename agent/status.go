package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"

	"github.com/trackd/trackd/agent/config"
)

// queryStatus asks the trackd configured by cfg for GET /status and prints
// it. It returns an error when trackd cannot be reached or is not ready, so
// `trackd status` works as a Kubernetes exec probe in images without curl.
func queryStatus(ctx context.Context, cfg config.Config, out io.Writer) error {
	body, err := callTrackd(ctx, cfg, http.MethodGet, pathStatus, nil, out)
	if err != nil {
		return err
	}
	var st struct {
		Ready string `json:"ready"`
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("trackd at %s sent a status that is not JSON: %w", describeEndpoint(cfg), err)
	}
	if st.Ready != "ready" {
		return fmt.Errorf("trackd is not ready: %s", st.Ready)
	}
	return nil
}

// callTrackd sends one request to the local trackd described by cfg, with
// its bearer token, prints the answer (indented when it is JSON) to out and
// returns it. An answer other than 200 is an error.
func callTrackd(ctx context.Context, cfg config.Config, method, path string, reqBody []byte, out io.Writer) ([]byte, error) {
	client, base := clientFor(cfg)
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, method, base+path, bytes.NewReader(reqBody))
	if err != nil {
		return nil, fmt.Errorf("ask trackd: %w", err)
	}
	if reqBody != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if tok := cfg.Listen.AuthToken.Reveal(); tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("ask trackd at %s: %w (is trackd running with this config?)", describeEndpoint(cfg), errors.Unwrap(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("ask trackd at %s: read answer: %w", describeEndpoint(cfg), err)
	}
	var pretty bytes.Buffer
	if json.Indent(&pretty, body, "", "  ") == nil {
		_, _ = out.Write(append(pretty.Bytes(), '\n'))
	} else {
		_, _ = out.Write(body)
	}
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("trackd at %s answered %s", describeEndpoint(cfg), resp.Status)
	}
	return body, nil
}

// clientFor returns a client for the local trackd, preferring the Unix
// socket, and the base URL to use with it.
func clientFor(cfg config.Config) (*http.Client, string) {
	if cfg.Listen.Unix != "" {
		path := cfg.Listen.Unix
		tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}}
		return &http.Client{Transport: tr}, "http://trackd"
	}
	return &http.Client{Transport: &http.Transport{}}, "http://" + cfg.Listen.HTTP
}

func describeEndpoint(cfg config.Config) string {
	if cfg.Listen.Unix != "" {
		return "unix socket " + cfg.Listen.Unix
	}
	return cfg.Listen.HTTP
}
