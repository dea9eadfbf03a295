// Package admin is kmeshd's local admin API (what kmeshctl talks to) and its
// client. It binds to loopback or a unix socket only: the API can change log
// levels and dump internal state, so it is never exposed on the network.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/kmesh-go/kmesh/pkg/logging"
	"github.com/kmesh-go/kmesh/pkg/version"
)

// DefaultAddress is where kmeshd serves the admin API unless told otherwise.
const DefaultAddress = "127.0.0.1:15200"

// Options wires the server to the daemon. Nil providers make their endpoint
// answer 501 Not Implemented, so a partially wired daemon is still honest.
type Options struct {
	// Address is host:port on a loopback address, or "unix:/path/to.sock".
	Address string
	Logger  *slog.Logger
	Logging *logging.Registry
	// ConfigDump returns the model currently applied (JSON-encodable).
	ConfigDump func(ctx context.Context) (any, error)
	// BPFDump returns the decoded contents of the dataplane's maps.
	BPFDump func(ctx context.Context) (*BPFDump, error)
	// Ready returns nil once programs are attached and the first full config is
	// applied, else why not.
	Ready func() error
	// Monitoring switches connection telemetry (metrics and access log).
	Monitoring Monitoring
	// Status adds daemon-specific fields (mode, config source, ...) to /debug/status.
	Status func() map[string]any
}

// Monitoring is the runtime switch for telemetry.
type Monitoring interface {
	MonitoringEnabled() bool
	SetMonitoring(enabled bool) error
}

// Server is a running admin server.
type Server struct {
	o     Options
	ln    net.Listener
	srv   *http.Server
	start time.Time
}

// Listen validates the address and binds it. A TCP address must be loopback.
func Listen(o Options) (*Server, error) {
	if o.Address == "" {
		o.Address = DefaultAddress
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	network, addr, err := ParseAddress(o.Address)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		// A stale socket from a previous (killed) daemon would make bind fail.
		if fi, err := os.Stat(addr); err == nil && fi.Mode()&os.ModeSocket != 0 {
			os.Remove(addr)
		}
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("admin API: listening on %s: %w", o.Address, err)
	}
	if network == "unix" {
		os.Chmod(addr, 0o600)
	}
	s := &Server{o: o, ln: ln, start: time.Now()}
	s.srv = &http.Server{Handler: s.routes(), ReadHeaderTimeout: 10 * time.Second}
	return s, nil
}

// ParseAddress splits an admin address into network and address and rejects
// anything that is not loopback or a unix socket.
func ParseAddress(a string) (network, addr string, err error) {
	if p, ok := strings.CutPrefix(a, "unix:"); ok {
		if p == "" {
			return "", "", errors.New("admin address: empty unix socket path")
		}
		return "unix", p, nil
	}
	host, _, err := net.SplitHostPort(a)
	if err != nil {
		return "", "", fmt.Errorf("admin address %q: %w (want 127.0.0.1:PORT, [::1]:PORT or unix:/path)", a, err)
	}
	if host == "localhost" {
		return "tcp", a, nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return "", "", fmt.Errorf("admin address %q: the admin API binds to loopback or a unix socket only (it can change log levels and dump state)", a)
	}
	return "tcp", a, nil
}

// Addr is the bound address (useful with port 0).
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve serves until ctx is done, then shuts down gracefully.
func (s *Server) Serve(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.srv.Shutdown(shut)
		if network, addr, _ := ParseAddress(s.o.Address); network == "unix" {
			os.Remove(addr)
		}
		return nil
	}
}

func (s *Server) routes() *http.ServeMux {
	m := http.NewServeMux()
	m.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	m.HandleFunc("GET /ready", s.ready)
	m.HandleFunc("GET /version", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, version.Get()) })
	m.HandleFunc("GET /debug/status", s.status)
	m.HandleFunc("GET /debug/config_dump", s.configDump)
	m.HandleFunc("GET /debug/bpf", s.bpfDump)
	m.HandleFunc("GET /debug/loggers", s.getLoggers)
	m.HandleFunc("POST /debug/loggers", s.setLoggers)
	m.HandleFunc("GET /debug/monitoring", s.getMonitoring)
	m.HandleFunc("POST /debug/monitoring", s.setMonitoring)
	m.HandleFunc("/debug/pprof/", pprof.Index)
	m.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	m.HandleFunc("/debug/pprof/profile", pprof.Profile)
	m.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	m.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return m
}

// APIError is the JSON body of every non-2xx answer.
type APIError struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeErr(w http.ResponseWriter, code int, format string, args ...any) {
	writeJSON(w, code, APIError{Error: fmt.Sprintf(format, args...)})
}

func (s *Server) readiness() (bool, string) {
	if s.o.Ready == nil {
		return false, "readiness is not wired"
	}
	if err := s.o.Ready(); err != nil {
		return false, err.Error()
	}
	return true, ""
}

func (s *Server) ready(w http.ResponseWriter, r *http.Request) {
	if ok, why := s.readiness(); !ok {
		http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ready")
}

// Status is the body of /debug/status.
type Status struct {
	Version  version.Info      `json:"version"`
	Uptime   string            `json:"uptime"`
	Ready    bool              `json:"ready"`
	NotReady string            `json:"notReady,omitempty"`
	Loggers  map[string]string `json:"loggers,omitempty"`
	Monitor  *bool             `json:"monitoring,omitempty"`
	Daemon   map[string]any    `json:"daemon,omitempty"`
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	st := Status{Version: version.Get(), Uptime: time.Since(s.start).Round(time.Second).String()}
	st.Ready, st.NotReady = s.readiness()
	if s.o.Logging != nil {
		st.Loggers = s.o.Logging.Levels()
	}
	if s.o.Monitoring != nil {
		on := s.o.Monitoring.MonitoringEnabled()
		st.Monitor = &on
	}
	if s.o.Status != nil {
		st.Daemon = s.o.Status()
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) configDump(w http.ResponseWriter, r *http.Request) {
	if s.o.ConfigDump == nil {
		writeErr(w, http.StatusNotImplemented, "config dump is not available in this daemon")
		return
	}
	v, err := s.o.ConfigDump(r.Context())
	if err != nil {
		writeErr(w, http.StatusInternalServerError, "config dump: %v", err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) bpfDump(w http.ResponseWriter, r *http.Request) {
	if s.o.BPFDump == nil {
		writeErr(w, http.StatusNotImplemented, "bpf dump is not available in this daemon")
		return
	}
	v, err := s.o.BPFDump(r.Context())
	if err != nil {
		writeErr(w, http.StatusInternalServerError, "bpf dump: %v", err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) getLoggers(w http.ResponseWriter, r *http.Request) {
	if s.o.Logging == nil {
		writeErr(w, http.StatusNotImplemented, "loggers are not available in this daemon")
		return
	}
	writeJSON(w, http.StatusOK, s.o.Logging.Levels())
}

// setLoggers takes ?set=name:level (repeatable), the form kmeshctl log --set uses.
func (s *Server) setLoggers(w http.ResponseWriter, r *http.Request) {
	if s.o.Logging == nil {
		writeErr(w, http.StatusNotImplemented, "loggers are not available in this daemon")
		return
	}
	sets := r.URL.Query()["set"]
	if len(sets) == 0 {
		writeErr(w, http.StatusBadRequest, "want ?set=name:level")
		return
	}
	for _, kv := range sets {
		name, level, ok := strings.Cut(kv, ":")
		if !ok {
			writeErr(w, http.StatusBadRequest, "%q: want name:level (e.g. xds:debug, or *:info for all)", kv)
			return
		}
		if err := s.o.Logging.SetLevel(name, level); err != nil {
			writeErr(w, http.StatusBadRequest, "%v", err)
			return
		}
		s.o.Logger.Info("log level changed", "logger", name, "level", level)
	}
	writeJSON(w, http.StatusOK, s.o.Logging.Levels())
}

// MonitoringState is the body of /debug/monitoring.
type MonitoringState struct {
	Enabled bool `json:"enabled"`
}

func (s *Server) getMonitoring(w http.ResponseWriter, r *http.Request) {
	if s.o.Monitoring == nil {
		writeErr(w, http.StatusNotImplemented, "monitoring switch is not available in this daemon")
		return
	}
	writeJSON(w, http.StatusOK, MonitoringState{Enabled: s.o.Monitoring.MonitoringEnabled()})
}

func (s *Server) setMonitoring(w http.ResponseWriter, r *http.Request) {
	if s.o.Monitoring == nil {
		writeErr(w, http.StatusNotImplemented, "monitoring switch is not available in this daemon")
		return
	}
	on, err := strconv.ParseBool(r.URL.Query().Get("enabled"))
	if err != nil {
		writeErr(w, http.StatusBadRequest, "want ?enabled=true|false")
		return
	}
	if err := s.o.Monitoring.SetMonitoring(on); err != nil {
		writeErr(w, http.StatusInternalServerError, "%v", err)
		return
	}
	s.o.Logger.Info("monitoring switched", "enabled", on)
	writeJSON(w, http.StatusOK, MonitoringState{Enabled: on})
}
