//go:build reliability

package reliability

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httputil"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/trackd/trackd/forwarder/upstreamtest"
)

// watchDir reports, through seen, the mode of every file created or moved
// into dir, taken (lstat) the moment inotify tells of it.
type dirWatch struct {
	f    *os.File
	done chan struct{}
	mu   sync.Mutex
	seen []string // "name mode"
}

func watchDir(t testing.TB, dir string) *dirWatch {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatalf("inotify: %v", err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_MOVED_TO|unix.IN_ATTRIB); err != nil {
		t.Fatalf("inotify watch: %v", err)
	}
	w := &dirWatch{f: os.NewFile(uintptr(fd), "inotify"), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		buf := make([]byte, 64<<10)
		for {
			n, err := w.f.Read(buf)
			if err != nil {
				return
			}
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				ev := (*unix.InotifyEvent)(bytesPtr(buf[off:]))
				name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)]), "\x00")
				off += unix.SizeofInotifyEvent + int(ev.Len)
				if fi, err := os.Lstat(filepath.Join(dir, name)); err == nil {
					w.mu.Lock()
					w.seen = append(w.seen, fmt.Sprintf("%s %s", name, fi.Mode()))
					w.mu.Unlock()
				}
			}
		}
	}()
	return w
}

func (w *dirWatch) stop() []string {
	w.f.Close()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seen
}

// TestUnixSocketIsBornWithItsMode: the socket appears at listen.unix with
// listen.unix_mode already set, whatever the umask: it is created in a
// private (0700) staging directory and renamed into place, so there is no
// moment at which a client could connect with looser permissions.
func TestUnixSocketIsBornWithItsMode(t *testing.T) {
	for _, mode := range []string{"0600", "0660", "0666"} {
		t.Run(mode, func(t *testing.T) {
			w := newWork(t)
			dir := w.path("run")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			cfg := w.baseConfig("http://" + freeAddr(t))
			cfg.Unix = filepath.Join(dir, "t.sock")
			cfg.UnixMode = mode
			watch := watchDir(t, dir)
			// And a tight loop of lstat on the final path: the first
			// sighting must already have the mode.
			var first fs.FileMode
			stopSpin := make(chan struct{})
			spun := make(chan struct{})
			go func() {
				defer close(spun)
				for {
					select {
					case <-stopSpin:
						return
					default:
					}
					if fi, err := os.Lstat(cfg.Unix); err == nil {
						first = fi.Mode()
						return
					}
				}
			}()
			old := syscall.Umask(0) // trackd inherits a umask that would leave 0777
			d := w.start(cfg)
			syscall.Umask(old)
			close(stopSpin)
			<-spun
			seen := watch.stop()
			want := fmt.Sprintf("%s", fs.ModeSocket|fs.FileMode(parseOctal(t, mode)))
			if first.String() != want {
				t.Errorf("first sighting of the socket: mode %s, want %s", first, want)
			}
			sawSocket := false
			for _, s := range seen {
				name, m, _ := strings.Cut(s, " ")
				switch {
				case name == "t.sock":
					sawSocket = true
					if m != want {
						t.Errorf("inotify: socket seen with mode %s, want %s", m, want)
					}
				case strings.HasPrefix(name, ".trackd-"):
					if m != "drwx------" {
						t.Errorf("staging directory %s has mode %s, want drwx------", name, m)
					}
				default:
					t.Errorf("unexpected file in the socket directory: %s", s)
				}
			}
			if !sawSocket {
				t.Errorf("inotify did not see the socket appear: %v", seen)
			}
			t.Logf("seen: %v", seen)
			// The log names the socket clients connect to, not the
			// staging path it was created at (gone by now).
			if lines := d.log.lines("msg=listening", "network=unix"); len(lines) != 1 || !strings.Contains(lines[0], "addr="+cfg.Unix+" ") {
				t.Errorf("the listening log line does not name listen.unix %s: %v", cfg.Unix, lines)
			}
			d.stopClean()
			if _, err := os.Lstat(cfg.Unix); err == nil {
				t.Error("the socket file was left behind after a clean stop")
			}
		})
	}
}

func parseOctal(t testing.TB, s string) uint32 {
	var v uint32
	if _, err := fmt.Sscanf(s, "%o", &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestSocketPathThatIsNotASocketIsRefused: a regular file, a symlink or a
// directory at listen.unix stops start-up (exit 1, the path named) and is
// left exactly as it was. A world-writable directory without the sticky bit
// is refused too.
func TestSocketPathThatIsNotASocketIsRefused(t *testing.T) {
	w := newWork(t)
	target := w.path("precious.txt")
	if err := os.WriteFile(target, []byte("do not delete"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		make func(p string) error
	}{
		{"regular file", func(p string) error { return os.WriteFile(p, []byte("mine"), 0o600) }},
		{"symlink", func(p string) error { return os.Symlink(target, p) }},
		{"dangling symlink", func(p string) error { return os.Symlink(w.path("nothing"), p) }},
		{"directory", func(p string) error { return os.Mkdir(p, 0o700) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := w.baseConfig("http://" + freeAddr(t))
			cfg.Unix = w.path("s-" + strings.ReplaceAll(tc.name, " ", "-"))
			cfg.SpoolPath = w.path("spool-" + strings.ReplaceAll(tc.name, " ", "-") + "/spool.db")
			if err := tc.make(cfg.Unix); err != nil {
				t.Fatal(err)
			}
			before, err := os.Lstat(cfg.Unix)
			if err != nil {
				t.Fatal(err)
			}
			d := w.spawn(cfg)
			if code := d.waitExit(10 * time.Second); code != 1 {
				t.Errorf("exit code %d, want 1", code)
			}
			if !strings.Contains(d.log.String(), cfg.Unix) {
				t.Errorf("the error does not name the path:\n%s", d.log.String())
			}
			after, err := os.Lstat(cfg.Unix)
			if err != nil || !os.SameFile(before, after) || before.Mode() != after.Mode() || before.Size() != after.Size() {
				t.Errorf("the %s at the socket path was changed or removed: %v", tc.name, err)
			}
			t.Logf("%s", strings.TrimSpace(d.log.String()))
		})
	}
	if b, err := os.ReadFile(target); err != nil || string(b) != "do not delete" {
		t.Errorf("the symlink's target was changed: %q %v", b, err)
	}
	t.Run("world-writable directory without sticky bit", func(t *testing.T) {
		dir := w.path("open")
		if err := os.Mkdir(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		cfg := w.baseConfig("http://" + freeAddr(t))
		cfg.Unix = filepath.Join(dir, "t.sock")
		cfg.SpoolPath = w.path("spool-open/spool.db")
		d := w.spawn(cfg)
		if code := d.waitExit(10 * time.Second); code != 1 {
			t.Errorf("exit code %d, want 1", code)
		}
		if !strings.Contains(d.log.String(), "world-writable") {
			t.Errorf("the error does not say why:\n%s", d.log.String())
		}
	})
}

// TestNonLoopbackListenerWithoutTokenWarns: listen.http on every interface
// without auth_token logs a warning at start; with a token, or on loopback,
// it does not.
func TestNonLoopbackListenerWithoutTokenWarns(t *testing.T) {
	w := newWork(t)
	for _, tc := range []struct {
		name, host, token string
		warn              bool
	}{
		{"0.0.0.0 without token", "0.0.0.0", "", true},
		{"0.0.0.0 with token", "0.0.0.0", "a-token", false},
		{"loopback without token", "127.0.0.1", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := w.baseConfig("http://" + freeAddr(t))
			_, port, _ := strings.Cut(freeAddr(t), ":")
			cfg.HTTP = tc.host + ":" + port
			cfg.AuthToken = tc.token
			cfg.SpoolPath = w.path("spool-" + strings.ReplaceAll(tc.name, " ", "-") + "/spool.db")
			d := w.start(cfg)
			warned := len(d.log.lines("level=WARN", "auth_token")) > 0
			if warned != tc.warn {
				t.Errorf("warning logged = %v, want %v:\n%s", warned, tc.warn, d.log.String())
			}
			d.stopClean()
		})
	}
}

// TestSpoolFileModes: the spool's directory is created 0700 and the file
// 0600, whatever the umask.
func TestSpoolFileModes(t *testing.T) {
	w := newWork(t)
	cfg := w.baseConfig("http://" + freeAddr(t))
	cfg.SpoolPath = w.path("new/deeper/spool.db")
	old := syscall.Umask(0)
	d := w.start(cfg)
	syscall.Umask(old)
	tg := d.targets()[0]
	l := newLedger("modes")
	l.sendOne(context.Background(), tg.client, tg.base, 0, 10, nil)
	d.stopClean()
	for path, want := range map[string]fs.FileMode{
		w.path("new/deeper"): fs.ModeDir | 0o700,
		cfg.SpoolPath:        0o600,
	} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %s, want %s", path, fi.Mode(), want)
		}
	}
}

func secret(prefix string) string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// TestSecretsNeverLeak runs trackd with a distinctive api_key and
// auth_token (from ${ENV} and TRACKD_API_KEY), drives it through its errors
// (bad configs, wrong tokens, upstream 401s and 400s, a crash dump, status,
// metrics and dead letters, debug logging) and sweeps everything it printed
// or answered for the secrets.
func TestSecretsNeverLeak(t *testing.T) {
	t.Parallel()
	w := newWork(t)
	cfgKey := secret("sk-cfg-")   // upstream.api_key via ${REL_API_KEY}
	envKey := secret("sk-env-")   // TRACKD_API_KEY, which overrides it
	token := secret("tok-")       // listen.auth_token via ${REL_TOKEN}
	urlPass := secret("pw-")      // a password in upstream.url (a mistake trackd refuses)
	clientKey := secret("sk-cl-") // an apiKey a client sends in a bad event
	secrets := map[string]string{"api_key": cfgKey, "TRACKD_API_KEY": envKey, "auth_token": token, "url password": urlPass, "client apiKey": clientKey}

	var answers bytes.Buffer // every HTTP answer trackd gave, as on the wire
	record := func(resp *http.Response, err error) *http.Response {
		t.Helper()
		if err != nil {
			t.Fatalf("request: %v", err)
		}
		dump, _ := httputil.DumpResponse(resp, true)
		answers.Write(dump)
		return resp
	}

	up := newUpstream(t)
	// Upstream first refuses the key (401), then refuses one kind of event
	// for good (400, dead letter), and accepts the rest.
	var phase401 = true
	var mu sync.Mutex
	up.SetMode(upstreamtest.Mode{Script: func(r upstreamtest.Request) (upstreamtest.Answer, bool) {
		mu.Lock()
		defer mu.Unlock()
		if phase401 {
			return upstreamtest.Answer{Status: 401, Body: `{"status":"failure","message":"invalid api key"}`}, true
		}
		if bytes.Contains(r.Body, []byte(`"REFUSE-ME"`)) {
			return upstreamtest.Answer{Status: 400, Body: `{"status":"failure","message":"event REFUSE-ME is not allowed"}`}, true
		}
		return upstreamtest.Answer{}, false
	}})

	env := []string{"REL_API_KEY=" + cfgKey, "REL_TOKEN=" + token, "TRACKD_API_KEY=" + envKey}
	cfg := w.baseConfig(up.URL())
	cfg.APIKey = "${REL_API_KEY}"
	cfg.AuthToken = "${REL_TOKEN}"
	cfg.LogLevel = "debug"
	cfgPath := w.writeConfig("config.yaml", cfg)

	// trackd check: the effective config shows *** for the secrets.
	chk := w.spawnArgs(nil, env, "check", "-config", cfgPath)
	if code := chk.waitExit(10 * time.Second); code != 0 {
		t.Fatalf("check exit %d:\n%s", code, chk.log.String())
	}
	if !strings.Contains(chk.log.String(), "***") {
		t.Errorf("check does not show the secrets as ***:\n%s", chk.log.String())
	}
	// trackd check on bad configs that carry the secrets.
	bad := []string{
		"listen:\n  auth_token: \"" + token + " with a space\"\nupstream:\n  api_key: \"${REL_API_KEY}\"\n  url: \"https://user:" + urlPass + "@example.com/?q=1\"\n  timeout: -1s\nbogus: 1\n",
		"upstream:\n  api_key: [\"" + cfgKey + "\"]\n",
		"upstream:\n  api_key: {k: \"" + cfgKey + "\"}\n",
		"upstream:\n  url: \"http://:" + urlPass + "@\"\n",
		"upstream:\n  api_key: \"" + cfgKey + "\"\n  api_key: \"" + cfgKey + "\"\n",
	}
	for i, y := range bad {
		p := w.writeFile(fmt.Sprintf("bad%d.yaml", i), y)
		c := w.spawnArgs(nil, env, "check", "-config", p)
		if code := c.waitExit(10 * time.Second); code != 2 {
			t.Errorf("check of bad config %d: exit %d, want 2:\n%s", i, code, c.log.String())
		}
	}

	d := w.start(cfg, env...)
	d.token = token
	tcp := &http.Client{Timeout: 10 * time.Second}
	base := "http://" + cfg.HTTP
	do := func(method, path, auth string, body string) *http.Response {
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		req.Header.Set("Content-Type", "application/json")
		resp := record(tcp.Do(req))
		resp.Body.Close()
		return resp
	}
	l := newLedger("secret")
	good := func() string {
		id := l.newID()
		resp := do("POST", "/api/v1/track", "Bearer "+token, string(eventBody(id, 0, 20)))
		l.record(id, 0, 20, resp.StatusCode, nil)
		return id
	}
	for _, auth := range []string{"", "Bearer wrong", "Bearer " + token[:len(token)-1], "Basic " + token, "bearer  " + token + "x"} {
		if resp := do("POST", "/api/v1/track", auth, `{"event":"e","userId":"u"}`); resp.StatusCode != 401 {
			t.Errorf("Authorization %q: %d, want 401", auth, resp.StatusCode)
		}
	}
	for i := 0; i < 5; i++ {
		good()
	}
	// Upstream says 401 for a while: trackd halts and logs it.
	waitFor(t, "the upstream 401 to be logged", 10*time.Second, func() bool {
		return len(d.log.lines("level=ERROR", "credentials")) > 0
	}, d.log.String)
	mu.Lock()
	phase401 = false
	mu.Unlock()
	// A bad event that carries a key of its own.
	if resp := do("POST", "/api/v1/track", "Bearer "+token, `{"apiKey":"`+clientKey+`","event":"","userId":"u"}`); resp.StatusCode != 400 {
		t.Errorf("bad event: %d, want 400", resp.StatusCode)
	}
	if resp := do("POST", "/api/v1/track", "Bearer "+token, `{"apiKey":12,"event":"e","userId":"u"}`); resp.StatusCode != 400 {
		t.Errorf("bad event: %d, want 400", resp.StatusCode)
	}
	// An event upstream refuses for good, with the client's own key.
	refuseID := l.newID()
	body := fmt.Sprintf(`{"apiKey":%q,"refuse":"REFUSE-ME",`, clientKey) + string(eventBody(refuseID, 0, 20))[1:]
	resp := do("POST", "/api/v1/track", "Bearer "+token, body)
	l.record(refuseID, 0, 20, resp.StatusCode, nil)
	for i := 0; i < 5; i++ {
		good()
	}
	d.waitDrained(30 * time.Second)
	// Everything an operator can look at.
	for _, p := range []string{"/status", "/metrics", "/healthz", "/readyz", "/dead-letters", "/nope"} {
		do("GET", p, "Bearer "+token, "")
		do("GET", p, "", "")
	}
	st := w.spawnArgs(nil, env, "status", "-config", cfgPath)
	if code := st.waitExit(10 * time.Second); code != 0 {
		t.Errorf("trackd status: exit %d\n%s", code, st.log.String())
	}
	dl := w.spawnArgs(nil, env, "dead-letters", "-config", cfgPath)
	if code := dl.waitExit(10 * time.Second); code != 0 {
		t.Errorf("trackd dead-letters: exit %d\n%s", code, dl.log.String())
	}
	// Failing starts: the port and the spool are taken.
	second := w.spawnArgs(cfg, env, "run", "-config", cfgPath)
	if code := second.waitExit(15 * time.Second); code != 1 {
		t.Errorf("a second trackd on the same config: exit %d, want 1", code)
	}
	// A crash dump: SIGQUIT makes the Go runtime print every goroutine.
	_ = d.cmd.Process.Signal(syscall.SIGQUIT)
	if code := d.waitExit(10 * time.Second); code == 0 {
		t.Errorf("SIGQUIT: exit 0")
	}
	if !strings.Contains(d.log.String(), "goroutine ") {
		t.Errorf("SIGQUIT printed no goroutine dump")
	}

	// The positive control: the secrets were really in use.
	var sawEnvKey bool
	for _, b := range up.deliveredBodies() {
		if bytes.Contains(b, []byte(`"apiKey":"`+envKey+`"`)) {
			sawEnvKey = true
		}
	}
	if !sawEnvKey {
		t.Error("upstream never received TRACKD_API_KEY: the sweep would prove nothing")
	}

	// The sweep.
	var texts strings.Builder
	texts.WriteString(w.allOutput())
	texts.Write(answers.Bytes())
	all := texts.String()
	for what, s := range secrets {
		for _, form := range []string{s, s[len(s)-16:], strings.ToUpper(s[len(s)-16:])} {
			if i := strings.Index(all, form); i >= 0 {
				t.Errorf("the %s leaked: %q found in trackd's output or answers: …%s…", what, form, all[max(0, i-300):min(len(all), i+100)])
				break
			}
		}
	}
	report(t, "secrets swept in %d KiB of logs (debug level), CLI output and HTTP answers: none found", len(all)>>10)
	audit(t, l, up, cfg.SpoolPath, auditOpts{})
}

func bytesPtr(b []byte) unsafe.Pointer { return unsafe.Pointer(&b[0]) }

// TestSecretsEchoedByUpstreamStayHidden: an upstream that quotes the API
// key back in its refusal ("apiKey sk-… is not valid for this project") must
// not make trackd print the key: the refusal becomes a dead letter's reason,
// which trackd logs and shows in GET /dead-letters.
func TestSecretsEchoedByUpstreamStayHidden(t *testing.T) {
	w := newWork(t)
	key := secret("sk-echo-")
	up := newUpstream(t)
	up.SetMode(upstreamtest.Mode{Script: func(r upstreamtest.Request) (upstreamtest.Answer, bool) {
		return upstreamtest.Answer{Status: 400, Body: `{"status":"failure","message":"apiKey ` + key + ` is not valid for this project"}`}, true
	}})
	cfg := w.baseConfig(up.URL())
	cfg.APIKey = key
	cfg.LogLevel = "debug"
	d := w.start(cfg)
	l := newLedger("echo")
	tg := d.targets()[0]
	l.sendOne(context.Background(), tg.client, tg.base, 0, 10, nil)
	d.waitDrained(10 * time.Second)
	code, dead, err := d.get("/dead-letters")
	if err != nil || code != 200 {
		t.Fatalf("GET /dead-letters: %d %v", code, err)
	}
	d.stopClean()
	for what, text := range map[string]string{"the log": d.log.String(), "GET /dead-letters": dead} {
		if i := strings.Index(text, key); i >= 0 {
			t.Errorf("the api_key upstream echoed appears in %s: …%s…", what, text[max(0, i-200):min(len(text), i+60)])
		}
	}
}
