package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"runtime"
	"time"

	"github.com/kardianos/service"

	"github.com/trackd/trackd/agent/config"
)

// systemdUnit replaces kardianos/service's default unit: it restarts in
// seconds rather than minutes, lets systemd own the state and runtime
// directories with private modes, gives shutdown.timeout room to drain, and
// hardens the process. It is written in the library's template syntax.
const systemdUnit = `[Unit]
Description={{Description}}
Documentation=https://github.com/trackd/trackd
ConditionFileIsExecutable={{Path | cmdEscape}}
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={{Path | cmdEscape}}{{range Arguments}} {{. | cmd}}{{end}}
{{if UserName}}User={{UserName}}
{{end}}Restart=always
RestartSec=2
TimeoutStopSec=60
StateDirectory=trackd
StateDirectoryMode=0700
RuntimeDirectory=trackd
RuntimeDirectoryMode=0755
EnvironmentFile=-/etc/default/trackd
LimitNOFILE=65536
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths=/var/lib/trackd /run/trackd

[Install]
WantedBy=multi-user.target
`

// program adapts an Agent to kardianos/service's Start/Stop interface.
type program struct {
	cfg   config.Config
	log   *slog.Logger
	agent *Agent
}

func (p *program) Start(service.Service) error {
	p.agent = New(p.cfg, p.log)
	return p.agent.Start()
}

func (p *program) Stop(service.Service) error {
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.Shutdown.Timeout.D())
	defer cancel()
	return p.agent.Close(ctx)
}

func newService(p *program, configPath string) (service.Service, error) {
	abs, err := filepath.Abs(configPath)
	if err != nil {
		return nil, fmt.Errorf("resolve config path %s: %w", configPath, err)
	}
	return service.New(p, &service.Config{
		Name:        "trackd",
		DisplayName: "trackd",
		Description: "trackd: durable local forwarding agent for the Track HTTP API",
		Arguments:   []string{"run", "-config", abs},
		Option:      service.KeyValue{"SystemdScript": systemdUnit},
	})
}

// needsServiceHandshake reports whether trackd was started by a service
// manager that must be answered through kardianos/service (the Windows
// service control manager). Unix service managers only send SIGTERM, which
// `trackd run` handles itself the same way in every setting.
func needsServiceHandshake() bool { return runtime.GOOS == "windows" && !service.Interactive() }

// runAsService runs the agent under a service manager until it says stop.
func runAsService(cfg config.Config, configPath string, log *slog.Logger) error {
	p := &program{cfg: cfg, log: log}
	svc, err := newService(p, configPath)
	if err != nil {
		return fmt.Errorf("set up service: %w", err)
	}
	return svc.Run()
}

func serviceCommand(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "help" {
		fmt.Fprint(stderr, "Usage: trackd service install|uninstall|start|stop|restart|status [-config FILE]\n")
		if len(args) == 0 {
			return &usageError{"service: no action given"}
		}
		return nil
	}
	action := args[0]
	fs, path := newFlags("service "+action, stderr)
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	switch action {
	case "install", "uninstall", "start", "stop", "restart", "status":
	default:
		return &usageError{fmt.Sprintf("service: unknown action %q", action)}
	}
	if action == "install" {
		// Refuse to install a service that would fail at its first start.
		if _, err := loadConfig(*path); err != nil {
			return err
		}
	}
	svc, err := newService(&program{}, *path)
	if err != nil {
		return fmt.Errorf("set up service: %w", err)
	}
	if action == "status" {
		st, err := svc.Status()
		if err != nil {
			return fmt.Errorf("service status: %w", err)
		}
		fmt.Fprintln(stdout, map[service.Status]string{service.StatusRunning: "running", service.StatusStopped: "stopped"}[st])
		if st != service.StatusRunning {
			return errors.New("trackd service is not running")
		}
		return nil
	}
	if err := service.Control(svc, action); err != nil {
		return fmt.Errorf("service %s: %w (run as root; see packaging/README.md)", action, err)
	}
	fmt.Fprintf(stdout, "trackd service: %s done at %s\n", action, time.Now().Format(time.RFC3339))
	return nil
}
