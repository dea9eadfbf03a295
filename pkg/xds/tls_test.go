package xds

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
)

// istiod-like server: TLS with a private root, bearer token checked per stream.
func TestTLSAndBearerToken(t *testing.T) {
	dir := t.TempDir()
	caPEM, certPEM, keyPEM := testPKI(t, "istiod.istio-system.svc")
	caFile := filepath.Join(dir, "root-cert.pem")
	tokFile := filepath.Join(dir, "istio-token")
	os.WriteFile(caFile, caPEM, 0o600)
	os.WriteFile(tokFile, []byte("token-1\n"), 0o600)

	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	var cluster []string
	g := grpc.NewServer(grpc.Creds(credentials.NewServerTLSFromCert(&cert)),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			md, _ := metadata.FromIncomingContext(ss.Context())
			mu.Lock()
			seen = append(seen, strings.Join(md.Get("authorization"), ","))
			cluster = append(cluster, strings.Join(md.Get("clusterid"), ","))
			mu.Unlock()
			return h(srv, ss)
		}))
	c := cache.NewLinearCache(AddressType)
	c.UpdateResources(map[string]types.Resource{"w1": wl("w1")}, nil)
	mux := &cache.MuxCache{
		Classify:      func(r *cache.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cache.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        map[string]cache.Cache{AddressType: c, AuthorizationType: cache.NewLinearCache(AuthorizationType)},
	}
	discovery.RegisterAggregatedDiscoveryServiceServer(g, server.NewServer(context.Background(), mux, nil))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	t.Cleanup(g.Stop)

	h := newHandler()
	cl, err := New(Options{Address: lis.Addr().String(), CAFile: caFile, ServerName: "istiod.istio-system.svc", TokenFile: tokFile,
		ClusterID: "c1", Node: testNode(), Backoff: fastBackoff()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { cl.RunDelta(ctx, h); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	waitFor(t, "sync over TLS", func() bool { return len(h.names()) == 1 })

	// A rotated token is used by the next stream.
	os.WriteFile(tokFile, []byte("token-2"), 0o600)
	g.Stop() // drops the stream; the client reconnects to a new server on the same port
	var lis2 net.Listener
	for i := 0; i < 100; i++ { // the port may linger briefly after Stop
		if lis2, err = net.Listen("tcp", lis.Addr().String()); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	g3 := grpc.NewServer(grpc.Creds(credentials.NewServerTLSFromCert(&cert)),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, hd grpc.StreamHandler) error {
			md, _ := metadata.FromIncomingContext(ss.Context())
			mu.Lock()
			seen = append(seen, strings.Join(md.Get("authorization"), ","))
			mu.Unlock()
			return hd(srv, ss)
		}))
	discovery.RegisterAggregatedDiscoveryServiceServer(g3, server.NewServer(context.Background(), mux, nil))
	go g3.Serve(lis2)
	t.Cleanup(g3.Stop)
	waitFor(t, "second stream", func() bool { mu.Lock(); defer mu.Unlock(); return len(seen) >= 2 })
	mu.Lock()
	defer mu.Unlock()
	if seen[0] != "Bearer token-1" || seen[len(seen)-1] != "Bearer token-2" || cluster[0] != "c1" {
		t.Fatalf("authorization headers %q, ClusterID %q", seen, cluster)
	}

	// A client that does not trust the server's root fails the handshake.
	other, _, _ := testPKI(t, "other")
	os.WriteFile(caFile, other, 0o600)
	bad, err := New(Options{Address: lis.Addr().String(), CAFile: caFile, ServerName: "istiod.istio-system.svc", Node: testNode(), Backoff: fastBackoff()})
	if err != nil {
		t.Fatal(err)
	}
	var disc []error
	var dmu sync.Mutex
	bad.opts.Hooks.OnDisconnect = func(err error) { dmu.Lock(); disc = append(disc, err); dmu.Unlock() }
	bctx, bcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer bcancel()
	go bad.RunDelta(bctx, newHandler())
	waitFor(t, "handshake failure", func() bool { dmu.Lock(); defer dmu.Unlock(); return len(disc) > 0 })
	dmu.Lock()
	if !strings.Contains(disc[0].Error(), "certificate") {
		t.Fatalf("want a certificate error, got %v", disc[0])
	}
	dmu.Unlock()
}

// testPKI makes a root CA and a server certificate for name.
func testPKI(t *testing.T, name string) (caPEM, certPEM, keyPEM []byte) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root " + name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	caCert, _ := x509.ParseCertificate(caDER)
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}
