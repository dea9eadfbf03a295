// Package model is kmesh's internal, source-independent description of the
// mesh. Config flows one way: a source (xDS from istiod, the embedded control
// plane's YAML) is compiled into a model.Snapshot (pkg/compile), validated, and
// lowered into kernel maps (pkg/dataplane for L4, the L7 tables for
// kernel-native mode). Nothing in this package talks to the kernel or the
// network; it is plain data with the invariants documented on each type.
package model

import (
	"net/netip"
	"time"
)

// Snapshot is a complete, self-consistent configuration. Applying a snapshot
// replaces everything: what is not in it is removed.
type Snapshot struct {
	// Version identifies the snapshot for logs, ACKs and config_dump.
	Version string

	// Node describes the node this daemon runs on (locality for tiered LB).
	Node Node

	// L4 (both modes): services and the workloads that back them.
	Services  []Service
	Workloads []Workload

	// L7 (kernel-native mode): Envoy-style listeners, routes and clusters.
	Listeners    []Listener
	RouteConfigs []RouteConfig
	Clusters     []Cluster
}

// Node is the local node.
type Node struct {
	Name     string
	Locality Locality
}

// Locality places a workload or node; routing preferences compare its scopes.
type Locality struct {
	Region  string `json:"region,omitempty"`
	Zone    string `json:"zone,omitempty"`
	Subzone string `json:"subzone,omitempty"`
	Node    string `json:"node,omitempty"`
	Cluster string `json:"cluster,omitempty"`
	Network string `json:"network,omitempty"`
}

// LocalityScope is one level of a routing preference (Istio's LoadBalancing.Scope).
type LocalityScope string

const (
	ScopeRegion  LocalityScope = "region"
	ScopeZone    LocalityScope = "zone"
	ScopeSubzone LocalityScope = "subzone"
	ScopeNode    LocalityScope = "node"
	ScopeCluster LocalityScope = "cluster"
	ScopeNetwork LocalityScope = "network"
)

// LBAlgorithm picks one endpoint among those of equal priority.
type LBAlgorithm string

const (
	LBRandom     LBAlgorithm = "random"      // uniform random (the default)
	LBRoundRobin LBAlgorithm = "round_robin" // strict rotation, shared by all CPUs
	LBWeighted   LBAlgorithm = "weighted"    // random, proportional to Endpoint weight
)

// LocalityMode decides how priority tiers (computed from RoutingPreference and
// the node's locality) are used.
type LocalityMode string

const (
	LocalityNone     LocalityMode = ""         // one tier: all endpoints
	LocalityStrict   LocalityMode = "strict"   // only the best tier; connect fails if it is empty
	LocalityFailover LocalityMode = "failover" // the first non-empty tier
)

// LoadBalancing is a service's or cluster's endpoint selection policy.
type LoadBalancing struct {
	Algorithm LBAlgorithm  `json:"algorithm,omitempty"`
	Locality  LocalityMode `json:"locality,omitempty"`
	// RoutingPreference lists scopes from most to least important. An endpoint's
	// tier is the number of leading scopes on which it does NOT match the node
	// (Istio/Kmesh semantics): tier 0 matches all of them.
	RoutingPreference []LocalityScope `json:"routingPreference,omitempty"`
}

// Protocol is an L4 protocol.
type Protocol string

const (
	TCP Protocol = "TCP"
)

// ServicePort maps a service port to the port workloads listen on.
type ServicePort struct {
	Name       string   `json:"name,omitempty"`
	Port       uint16   `json:"port"`
	TargetPort uint16   `json:"targetPort,omitempty"` // 0 means same as Port
	Protocol   Protocol `json:"protocol,omitempty"`   // TCP if empty
	// ServerFirst marks protocols where the server speaks first (SMTP, MySQL):
	// such ports cannot carry a waypoint header written on the client's first
	// send (see docs on waypoints).
	ServerFirst bool `json:"serverFirst,omitempty"`
}

// Service is a load-balanced virtual address (VIP:port) and its policy.
// Key is unique and stable ("namespace/hostname", the Workload API's xDS key).
type Service struct {
	Key       string        `json:"key"`
	Name      string        `json:"name,omitempty"`
	Namespace string        `json:"namespace,omitempty"`
	Hostname  string        `json:"hostname,omitempty"`
	VIPs      []netip.Addr  `json:"vips"`
	Ports     []ServicePort `json:"ports"`
	LB        LoadBalancing `json:"lb"`
	// Waypoint, if set, receives this service's connections (dual-engine L7).
	Waypoint *WaypointRef `json:"waypoint,omitempty"`
}

// WaypointRef names the waypoint that handles a service's or workload's traffic:
// the waypoint's own Service (load-balanced like any other) and the port to use.
type WaypointRef struct {
	Service string `json:"service"` // Key of the waypoint's Service
	Port    uint16 `json:"port"`    // the waypoint service port that accepts redirected traffic
	// ServerFirst decides what happens to connections to server-first ports
	// (ServicePort.ServerFirst), which cannot carry a waypoint header.
	ServerFirst ServerFirstPolicy `json:"serverFirst,omitempty"`
}

// ServerFirstPolicy is what a waypoint-bound object does with server-first
// ports. The waypoint header (PROXY protocol) is written on the client's first
// send, and with a server-first protocol (SMTP, MySQL) the client sends nothing
// until the server has spoken, while the waypoint waits for the header.
type ServerFirstPolicy string

const (
	// ServerFirstBypass (the default, also ""): such ports skip the waypoint
	// and are load-balanced directly at L4.
	ServerFirstBypass ServerFirstPolicy = "bypass"
	// ServerFirstRefuse: connects to such ports fail with ECONNREFUSED, for
	// waypoints that must not be bypassed (L7 policy enforcement).
	ServerFirstRefuse ServerFirstPolicy = "refuse"
)

// WorkloadPort overrides a service port's target port for one workload
// (Istio's Workload.services PortList).
type WorkloadPort struct {
	ServicePort uint16 `json:"servicePort"`
	TargetPort  uint16 `json:"targetPort"`
}

// Enrolment says which local processes belong to a workload and so are
// meshed: the processes in a cgroup (and its descendants), or every socket
// created in a network namespace. A workload with neither is remote.
type Enrolment struct {
	CgroupPath string `json:"cgroup,omitempty"` // cgroup v2 path, absolute or relative to the mount
	NetnsPath  string `json:"netns,omitempty"`  // e.g. /run/netns/pod1 or /proc/<pid>/ns/net
}

// Workload is an addressable instance (pod, VM, process group) that backs
// services. UID is unique and stable.
type Workload struct {
	UID       string       `json:"uid"`
	Name      string       `json:"name,omitempty"`
	Namespace string       `json:"namespace,omitempty"`
	Addresses []netip.Addr `json:"addresses"`
	Locality  Locality     `json:"locality,omitempty"`
	// Weight for LBWeighted (Istio: capacity); 0 means 1.
	Weight uint32 `json:"weight,omitempty"`
	// Services maps a Service.Key to port overrides; a key with no overrides
	// makes the workload an endpoint using the service's TargetPorts.
	Services map[string][]WorkloadPort `json:"services,omitempty"`
	// Healthy workloads receive traffic; unhealthy ones are kept but not used.
	Healthy   bool         `json:"healthy"`
	Waypoint  *WaypointRef `json:"waypoint,omitempty"`
	Enrolment *Enrolment   `json:"enrolment,omitempty"`
}

// ---- L7 (kernel-native) ----------------------------------------------------

// Listener matches connections by destination and hands them to HTTP routing
// (RouteConfig) or, for non-HTTP traffic, to a TCP route.
type Listener struct {
	Name    string         `json:"name"`
	Address netip.AddrPort `json:"address"` // VIP:port; an unspecified IP matches any
	// RouteConfig names the RouteConfig for HTTP/1.x requests ("" = TCP only).
	RouteConfig string `json:"routeConfig,omitempty"`
	// TCPRoute is used for non-HTTP first bytes, or for every connection when
	// RouteConfig is empty.
	TCPRoute *RouteAction `json:"tcpRoute,omitempty"`
}

// RouteConfig is a set of virtual hosts (Envoy RouteConfiguration).
type RouteConfig struct {
	Name         string        `json:"name"`
	VirtualHosts []VirtualHost `json:"virtualHosts"`
}

// VirtualHost matches requests by Host. Domains are exact names, "*.suffix",
// "prefix.*" or "*", matched in Envoy's order (exact, suffix, prefix, any).
type VirtualHost struct {
	Name    string   `json:"name"`
	Domains []string `json:"domains"`
	Routes  []Route  `json:"routes"`
}

// Route is a match and an action; the first matching route wins.
type Route struct {
	Name   string      `json:"name,omitempty"`
	Match  RouteMatch  `json:"match"`
	Action RouteAction `json:"action"`
}

// RouteMatch matches the request line and headers. Exactly one of PathPrefix
// and PathExact is set; all Headers must match.
type RouteMatch struct {
	PathPrefix string        `json:"prefix,omitempty"`
	PathExact  string        `json:"path,omitempty"`
	Headers    []HeaderMatch `json:"headers,omitempty"`
}

// HeaderMatch matches one header by case-insensitive name. Exactly one of
// Exact, Prefix and Present is set.
type HeaderMatch struct {
	Name    string `json:"name"`
	Exact   string `json:"exact,omitempty"`
	Prefix  string `json:"prefix,omitempty"`
	Present bool   `json:"present,omitempty"`
}

// RouteAction sends traffic to one cluster or splits it by weight.
type RouteAction struct {
	Cluster          string            `json:"cluster,omitempty"`
	WeightedClusters []WeightedCluster `json:"weightedClusters,omitempty"`
}

// WeightedCluster is one branch of a weighted split.
type WeightedCluster struct {
	Name   string `json:"name"`
	Weight uint32 `json:"weight"`
}

// Cluster is a named set of endpoints with an LB policy (Envoy Cluster + its
// ClusterLoadAssignment).
type Cluster struct {
	Name      string        `json:"name"`
	LB        LoadBalancing `json:"lb"`
	Endpoints []Endpoint    `json:"endpoints"`
	// MaxConnections is the circuit-breaker limit on concurrent connections
	// (0 = unlimited); the (max+1)th connect fails.
	MaxConnections uint32        `json:"maxConnections,omitempty"`
	ConnectTimeout time.Duration `json:"connectTimeout,omitempty"`
}

// Endpoint is one backend of a Cluster.
type Endpoint struct {
	Address  netip.AddrPort `json:"address"`
	Weight   uint32         `json:"weight,omitempty"`
	Locality Locality       `json:"locality,omitempty"`
	// Priority is Envoy's explicit priority (0 best); combined with locality tiers.
	Priority uint32 `json:"priority,omitempty"`
}
