package agent

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/trackd/trackd/forwarder/upstreamtest"
)

func newUpstream(t testing.TB) *upstreamtest.Server {
	t.Helper()
	up, err := upstreamtest.NewServer("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	return up
}

// TestDeadLettersCanBeListedAndRequeued: events upstream refuses are kept
// with their reason, shown with the apiKey masked, and sent again on request.
func TestDeadLettersCanBeListedAndRequeued(t *testing.T) {
	up := newUpstream(t)
	up.SetMode(upstreamtest.Mode{Answer: upstreamtest.Answer{Status: 400, Body: `{"status":"failure","message":"plan over quota"}`}})
	cfg := testConfig(t)
	cfg.Upstream.URL = up.URL()
	cfg.Upstream.APIKey = "key-SECRET-789"
	cfg.Listen.AuthToken = "tok-SECRET-321"
	ta := startAgent(t, cfg)
	auth := http.Header{"Authorization": {"Bearer tok-SECRET-321"}}
	for i := 0; i < 3; i++ {
		if r := do(t, ta.unix, "POST", "http://trackd/api/v1/track", auth, []byte(fmt.Sprintf(`{"event":"e%d","userId":"u"}`, i))); r.status != 200 {
			t.Fatalf("status %d: %s", r.status, r.body)
		}
	}
	waitFor(t, "three dead letters", 10*time.Second, func() bool { return ta.spool.Stats().Dead == 3 })

	if r := do(t, ta.unix, "GET", "http://trackd/dead-letters", nil, nil); r.status != 401 {
		t.Fatalf("listing without the token: %d, want 401", r.status)
	}
	r := do(t, ta.unix, "GET", "http://trackd/dead-letters?limit=2", auth, nil)
	if r.status != 200 {
		t.Fatalf("list: %d %s", r.status, r.body)
	}
	if strings.Contains(r.body, "SECRET") {
		t.Fatalf("the listing shows a secret: %s", r.body)
	}
	var page deadLetterPageView
	if err := json.Unmarshal([]byte(r.body), &page); err != nil {
		t.Fatal(err)
	}
	if len(page.DeadLetters) != 2 || page.NextAfter != page.DeadLetters[1].ID {
		t.Fatalf("page = %+v, want 2 letters and a next_after", page)
	}
	first := page.DeadLetters[0]
	if first.Status != 400 || !strings.Contains(first.Reason, "plan over quota") || first.Kind != "track" {
		t.Errorf("dead letter = %+v, want status 400 with upstream's message as reason", first)
	}
	var body map[string]any
	if err := json.Unmarshal(first.Body, &body); err != nil || body["apiKey"] != "***" || body["event"] != "e0" {
		t.Errorf("body = %s, want the event with apiKey masked", first.Body)
	}

	up.SetMode(upstreamtest.Mode{})
	cfgFile := writeConfigFile(t, shortTempDir(t), fmt.Sprintf("listen: {http: \"\", unix: %q, auth_token: tok-SECRET-321}\nspool: {path: ./x.db}\n", cfg.Listen.Unix))
	code, out, errOut := runMain("dead-letters", "-config", cfgFile, "-requeue", "all")
	if code != 0 || !strings.Contains(out, `"requeued": 3`) {
		t.Fatalf("requeue: exit %d\n%s%s", code, out, errOut)
	}
	waitFor(t, "the requeued events to be delivered", 10*time.Second, func() bool { return up.Count(200) == 3 })
	if st := ta.spool.Stats(); st.Dead != 0 {
		t.Errorf("%d dead letters left after requeue", st.Dead)
	}
	if code, out, _ := runMain("dead-letters", "-config", cfgFile, "-requeue", "x"); code != 2 {
		t.Errorf("bad -requeue: exit %d, want 2: %s", code, out)
	}
}
