package controlplane

// Config is the standalone mesh file (deploy/standalone/mesh.yaml). The schema
// is documented in docs/config.md; field names are camelCase like Kubernetes.
type Config struct {
	// Node describes the host kmeshd runs on; the default name is the
	// daemon's node name. Its locality ranks endpoints for locality LB.
	Node *NodeConfig `yaml:"node,omitempty"`
	// Services are load-balanced VIPs.
	Services []ServiceConfig `yaml:"services,omitempty"`
	// Workloads are the backends and the local clients.
	Workloads []WorkloadConfig `yaml:"workloads,omitempty"`
	// HTTP are in-kernel HTTP routes at a VIP:port (kernel-native mode).
	HTTP []HTTPListenerConfig `yaml:"http,omitempty"`
}

// NodeConfig is the local node.
type NodeConfig struct {
	Name     string          `yaml:"name,omitempty"`
	Locality *LocalityConfig `yaml:"locality,omitempty"`
}

// LocalityConfig places a node or workload.
type LocalityConfig struct {
	Region  string `yaml:"region,omitempty"`
	Zone    string `yaml:"zone,omitempty"`
	Subzone string `yaml:"subzone,omitempty"`
}

// ServiceConfig is one service.
type ServiceConfig struct {
	Name      string `yaml:"name"`
	Namespace string `yaml:"namespace,omitempty"` // default "default"
	// Hostname defaults to <name>.<namespace>.svc.cluster.local.
	Hostname string       `yaml:"hostname,omitempty"`
	VIPs     []string     `yaml:"vips"`
	Ports    []PortConfig `yaml:"ports"`
	LB       *LBConfig    `yaml:"lb,omitempty"`
	// Waypoint names another service (by name in this namespace, or
	// namespace/hostname) that receives this service's traffic.
	Waypoint *WaypointConfig `yaml:"waypoint,omitempty"`
	// Cluster tunes the Envoy clusters of the service's ports (kernel-native).
	Cluster *ClusterConfig `yaml:"cluster,omitempty"`
}

// ClusterConfig tunes the Envoy clusters of a service (kernel-native mode).
type ClusterConfig struct {
	// MaxConnections is the circuit breaker: at most this many concurrent
	// connections per service port; the next one fails (EBUSY). 0: no limit.
	MaxConnections int `yaml:"maxConnections,omitempty"`
	// ConnectTimeout bounds a connection's handshake, e.g. "2s" or "500ms"
	// (default 1s); the connection then fails with ETIMEDOUT.
	ConnectTimeout string `yaml:"connectTimeout,omitempty"`
}

// PortConfig maps a service port to the workloads' port.
type PortConfig struct {
	Name       string `yaml:"name,omitempty"`
	Port       int    `yaml:"port"`
	TargetPort int    `yaml:"targetPort,omitempty"` // default: port
	// ServerFirst marks a protocol where the server speaks first (SMTP,
	// MySQL): such a port cannot carry a waypoint header (docs/waypoint.md).
	ServerFirst bool `yaml:"serverFirst,omitempty"`
}

// LBConfig is a service's load-balancing policy.
type LBConfig struct {
	Algorithm         string   `yaml:"algorithm,omitempty"`         // random (default), round_robin, weighted
	Locality          string   `yaml:"locality,omitempty"`          // "", strict, failover
	RoutingPreference []string `yaml:"routingPreference,omitempty"` // region, zone, subzone, node, cluster, network
}

// WaypointConfig points at a waypoint service.
type WaypointConfig struct {
	Service string `yaml:"service"`
	Port    int    `yaml:"port,omitempty"` // default 15008
	// ServerFirst: what server-first ports do: bypass (default: skip the
	// waypoint, load-balanced directly) or refuse (connects fail).
	ServerFirst string `yaml:"serverFirst,omitempty"`
}

// WorkloadConfig is one workload.
type WorkloadConfig struct {
	Name      string `yaml:"name"`
	Namespace string `yaml:"namespace,omitempty"` // default "default"
	// UID defaults to "standalone/<namespace>/<name>".
	UID       string   `yaml:"uid,omitempty"`
	Addresses []string `yaml:"addresses,omitempty"`
	// Services this workload backs, by service name (same namespace) or
	// namespace/hostname, with optional per-port target overrides.
	Services []WorkloadServiceConfig `yaml:"services,omitempty"`
	Locality *LocalityConfig         `yaml:"locality,omitempty"`
	// Weight for the weighted algorithm; default 1.
	Weight *int `yaml:"weight,omitempty"`
	// Healthy defaults to true; unhealthy workloads get no traffic.
	Healthy *bool `yaml:"healthy,omitempty"`
	// Node the workload runs on; enrolled workloads default to this node.
	Node string `yaml:"node,omitempty"`
	// Enrolment makes local processes part of the mesh: those in a cgroup
	// (path under the cgroup2 mount) or in a network namespace.
	Enrolment *EnrolmentConfig `yaml:"enrolment,omitempty"`
	// Waypoint receives the traffic addressed to this workload's own
	// addresses (not to its services' VIPs).
	Waypoint *WaypointConfig `yaml:"waypoint,omitempty"`
}

// WorkloadServiceConfig binds a workload to a service.
type WorkloadServiceConfig struct {
	Service string               `yaml:"service"`
	Ports   []WorkloadPortConfig `yaml:"ports,omitempty"`
}

// WorkloadPortConfig overrides a target port for one workload.
type WorkloadPortConfig struct {
	Port       int `yaml:"port"`
	TargetPort int `yaml:"targetPort"`
}

// EnrolmentConfig selects local processes.
type EnrolmentConfig struct {
	Cgroup string `yaml:"cgroup,omitempty"`
	Netns  string `yaml:"netns,omitempty"`
}

// HTTPListenerConfig is an HTTP/1.x listener with routes (kernel-native).
type HTTPListenerConfig struct {
	Name         string              `yaml:"name"`
	Address      string              `yaml:"address"` // a VIP
	Port         int                 `yaml:"port"`
	VirtualHosts []VirtualHostConfig `yaml:"virtualHosts"`
	// TCP receives connections whose first bytes are not HTTP/1.x. Default:
	// the service whose VIP:port the listener takes, if any.
	TCP *BackendConfig `yaml:"tcp,omitempty"`
}

// VirtualHostConfig matches requests by Host.
type VirtualHostConfig struct {
	Name    string        `yaml:"name"`
	Domains []string      `yaml:"domains"`
	Routes  []RouteConfig `yaml:"routes"`
}

// RouteConfig is one HTTP route; the first match wins.
type RouteConfig struct {
	Name  string           `yaml:"name,omitempty"`
	Match RouteMatchConfig `yaml:"match"`
	// To sends requests to one service port, or splits them by weight.
	To []BackendConfig `yaml:"to"`
}

// RouteMatchConfig matches a request.
type RouteMatchConfig struct {
	Prefix  string              `yaml:"prefix,omitempty"`
	Path    string              `yaml:"path,omitempty"`
	Headers []HeaderMatchConfig `yaml:"headers,omitempty"`
}

// HeaderMatchConfig matches one header.
type HeaderMatchConfig struct {
	Name    string `yaml:"name"`
	Exact   string `yaml:"exact,omitempty"`
	Prefix  string `yaml:"prefix,omitempty"`
	Present bool   `yaml:"present,omitempty"`
}

// BackendConfig is a route target: a service port and a weight.
type BackendConfig struct {
	Service string `yaml:"service"`
	Port    int    `yaml:"port,omitempty"`   // default: the listener port
	Weight  int    `yaml:"weight,omitempty"` // for splits; default 1
}
