package xds

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/types/known/structpb"
)

// Options configures a Client. Only Address is required.
type Options struct {
	// Address of the xDS server: host:port, or unix:///path.
	Address string
	// CAFile is a PEM root certificate (istiod's root-cert.pem). When set the
	// connection uses TLS and verifies the server against it; when empty the
	// connection is plaintext, which is meant for local servers (the embedded
	// control plane on 127.0.0.1).
	CAFile string
	// ServerName overrides the name verified in the server certificate
	// (default: the host part of Address).
	ServerName string
	// TokenFile holds a bearer token sent as "authorization: Bearer <token>" on
	// every stream, re-read for each stream so rotated tokens are picked up
	// (ztunnel and Kmesh send the istio-ca audience service-account JWT).
	TokenFile string
	// ClusterID is sent as the "ClusterID" header istiod uses to place the
	// client (default "Kubernetes").
	ClusterID string
	// Node identifies the client (see NodeIdentity). Required.
	Node *core.Node
	// Backoff paces reconnects; the zero value means DefaultBackoff.
	Backoff Backoff
	// Keepalive detects dead connections (a cut network does not reset the
	// TCP connection). Zero values mean 30 s ping interval, 10 s timeout.
	KeepaliveTime, KeepaliveTimeout time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Hooks are optional callbacks (metrics, tests).
	Hooks Hooks
}

// Backoff is exponential backoff with jitter: the n-th consecutive failed
// attempt waits Initial*Multiplier^n, capped at Max, scaled by a random factor
// in [1-Jitter, 1+Jitter] so that many daemons do not reconnect in lockstep.
type Backoff struct {
	Initial    time.Duration
	Max        time.Duration
	Multiplier float64
	Jitter     float64
}

// DefaultBackoff starts at 500 ms and caps at 30 s, ±20 %.
var DefaultBackoff = Backoff{Initial: 500 * time.Millisecond, Max: 30 * time.Second, Multiplier: 2, Jitter: 0.2}

func (b Backoff) withDefaults() Backoff {
	if b.Initial <= 0 {
		b.Initial = DefaultBackoff.Initial
	}
	if b.Max <= 0 {
		b.Max = DefaultBackoff.Max
	}
	if b.Max < b.Initial {
		b.Max = b.Initial
	}
	if b.Multiplier < 1 {
		b.Multiplier = DefaultBackoff.Multiplier
	}
	if b.Jitter < 0 || b.Jitter > 1 {
		b.Jitter = DefaultBackoff.Jitter
	}
	return b
}

// Delay is the wait before retry number attempt (0-based).
func (b Backoff) Delay(attempt int) time.Duration {
	b = b.withDefaults()
	d := float64(b.Initial)
	for i := 0; i < attempt && d < float64(b.Max); i++ {
		d *= b.Multiplier
	}
	d = min(d, float64(b.Max))
	d *= 1 + b.Jitter*(2*rand.Float64()-1)
	return time.Duration(d)
}

func (o *Options) validate() error {
	if o.Address == "" {
		return errors.New("xds: no server address")
	}
	if o.Node == nil || o.Node.GetId() == "" {
		return errors.New("xds: no node identity")
	}
	if o.TokenFile != "" && o.CAFile == "" && !isLocal(o.Address) {
		return fmt.Errorf("xds: refusing to send the bearer token from %s in cleartext to %s: set the root certificate (--xds-ca)", o.TokenFile, o.Address)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.ClusterID == "" {
		o.ClusterID = "Kubernetes"
	}
	o.Backoff = o.Backoff.withDefaults()
	if o.KeepaliveTime <= 0 {
		o.KeepaliveTime = 30 * time.Second
	}
	if o.KeepaliveTimeout <= 0 {
		o.KeepaliveTimeout = 10 * time.Second
	}
	return nil
}

// isLocal reports whether addr is a unix socket or a loopback address, where
// plaintext (and a token over it) stays on the machine.
func isLocal(addr string) bool {
	if strings.HasPrefix(addr, "unix:") {
		return true
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// dialOptions builds the transport: TLS with the given root when CAFile is
// set, plaintext otherwise; the bearer token as per-RPC credentials.
func (o *Options) dialOptions() ([]grpc.DialOption, error) {
	opts := []grpc.DialOption{
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: o.KeepaliveTime, Timeout: o.KeepaliveTimeout}),
		// Large pushes (10k services) exceed the 4 MiB default.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256 << 20)),
	}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("xds: reading root certificate: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("xds: %s holds no PEM certificate", o.CAFile)
		}
		name := o.ServerName
		if name == "" {
			name, _, _ = net.SplitHostPort(o.Address)
		}
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: name, MinVersion: tls.VersionTLS12})))
	} else {
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	if o.TokenFile != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(tokenCredentials{file: o.TokenFile, secure: o.CAFile != ""}))
	}
	return opts, nil
}

// tokenCredentials reads the token file on every stream.
type tokenCredentials struct {
	file   string
	secure bool
}

func (t tokenCredentials) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	b, err := os.ReadFile(t.file)
	if err != nil {
		return nil, fmt.Errorf("xds: reading token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return nil, fmt.Errorf("xds: token file %s is empty", t.file)
	}
	return map[string]string{"authorization": "Bearer " + tok}, nil
}

// RequireTransportSecurity is false only for local plaintext servers, which
// validate() restricts to loopback and unix sockets.
func (t tokenCredentials) RequireTransportSecurity() bool { return t.secure }

// NodeIdentity is what istiod needs to know about the client.
type NodeIdentity struct {
	IP        string // the daemon's (pod) IP
	PodName   string
	Namespace string
	NodeName  string // Kubernetes node name; workloads with the same node are local
	ClusterID string
	DNSDomain string // default "<ns>.svc.cluster.local"
}

// IdentityFromEnv reads the Kubernetes downward-API variables Kmesh uses
// (INSTANCE_IP, POD_NAME, POD_NAMESPACE, NODE_NAME, CLUSTER_ID), defaulting to
// the host name and first non-loopback address for a standalone host.
func IdentityFromEnv() NodeIdentity {
	host, _ := os.Hostname()
	id := NodeIdentity{
		IP:        os.Getenv("INSTANCE_IP"),
		PodName:   os.Getenv("POD_NAME"),
		Namespace: os.Getenv("POD_NAMESPACE"),
		NodeName:  os.Getenv("NODE_NAME"),
		ClusterID: os.Getenv("CLUSTER_ID"),
	}
	if id.PodName == "" {
		id.PodName = host
	}
	if id.NodeName == "" {
		id.NodeName = host
	}
	if id.Namespace == "" {
		id.Namespace = "kmesh-system"
	}
	if id.ClusterID == "" {
		id.ClusterID = "Kubernetes"
	}
	if id.IP == "" {
		id.IP = firstHostIP()
	}
	return id
}

func firstHostIP() string {
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && !p.Addr().IsLoopback() && !p.Addr().IsLinkLocalUnicast() {
				return p.Addr().String()
			}
		}
	}
	return "127.0.0.1"
}

func (n NodeIdentity) id(kind string) string {
	dom := n.DNSDomain
	if dom == "" {
		dom = n.Namespace + ".svc.cluster.local"
	}
	return fmt.Sprintf("%s~%s~%s.%s~%s", kind, n.IP, n.PodName, n.Namespace, dom)
}

func (n NodeIdentity) metadata() *structpb.Struct {
	m, _ := structpb.NewStruct(map[string]any{
		"NAME":        n.PodName,
		"NAMESPACE":   n.Namespace,
		"NODE_NAME":   n.NodeName,
		"CLUSTER_ID":  n.ClusterID,
		"INSTANCE_IP": n.IP,
	})
	return m
}

// ZtunnelNode is the node istiod serves the Workload API to (dual-engine):
// id "ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local".
func (n NodeIdentity) ZtunnelNode() *core.Node {
	return &core.Node{Id: n.id("ztunnel"), Metadata: n.metadata()}
}

// SidecarNode is the node istiod serves Envoy xDS to (kernel-native).
func (n NodeIdentity) SidecarNode() *core.Node {
	return &core.Node{Id: n.id("sidecar"), Metadata: n.metadata()}
}
