package bench

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/kmesh-go/kmesh/bench/load"
)

// The harness re-executes its own binary for the processes inside the
// namespaces, so client and server are the same build in every scenario.
const (
	RoleServe = "serve" // echo servers in the server pod, until SIGTERM
	RoleLoad  = "load"  // one client run; the load.Result as JSON on stdout
	RoleProbe = "probe" // one GET of the server's debug page; prints the peer the server saw
)

// IsRole reports whether arg names a role (the first argument of a re-exec).
func IsRole(arg string) bool { return arg == RoleServe || arg == RoleLoad || arg == RoleProbe }

// RoleMain runs a role and returns the process exit code.
func RoleMain(role string, args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch role {
	case RoleServe:
		err = serveMain(ctx, args)
	case RoleLoad:
		err = loadMain(ctx, args)
	case RoleProbe:
		err = probeMain(ctx, args)
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench %s: %v\n", role, err)
		return 1
	}
	return 0
}

func serveMain(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet(RoleServe, flag.ContinueOnError)
	httpAddr := fs.String("http", fmt.Sprintf(":%d", ServerHTTPPort), "HTTP echo listen address")
	tcpAddr := fs.String("tcp", fmt.Sprintf(":%d", ServerTCPPort), "TCP echo listen address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	h, t, err := load.Serve(*httpAddr, *tcpAddr)
	if err != nil {
		return err
	}
	fmt.Printf("serving http on %s, tcp echo on %s\n", h, t)
	<-ctx.Done()
	return nil
}

func loadMain(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet(RoleLoad, flag.ContinueOnError)
	spec := fs.String("spec", "", "load.Spec as JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var s load.Spec
	if err := json.Unmarshal([]byte(*spec), &s); err != nil {
		return fmt.Errorf("-spec: %w", err)
	}
	// A hard stop in case pacing or a stuck socket outlives every deadline.
	ctx, cancel := context.WithTimeout(ctx, s.Warmup+s.Duration+s.RequestTimeout+30e9)
	defer cancel()
	res, err := load.Run(ctx, s)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func probeMain(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet(RoleProbe, flag.ContinueOnError)
	addr := fs.String("addr", "", "host:port of the scenario's HTTP entry")
	if err := fs.Parse(args); err != nil {
		return err
	}
	peer, err := load.Probe(ctx, *addr, 5*time.Second)
	if err != nil {
		return err
	}
	fmt.Println(peer)
	return nil
}
