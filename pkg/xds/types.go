// Package xds is kmesh's ADS client. One gRPC client speaks both protocols of
// the AggregatedDiscoveryService:
//
//   - delta (DeltaAggregatedResources) for the Istio Workload API
//     (istio.workload.Address, istio.security.Authorization), as ztunnel does, in
//     dual-engine mode;
//   - state of the world (StreamAggregatedResources) for Envoy's Cluster,
//     ClusterLoadAssignment, Listener and RouteConfiguration, with Envoy's
//     CDS → EDS → LDS → RDS warming, in kernel-native mode.
//
// The client owns the protocol: nonces, versions, ACK/NACK with error_detail,
// subscriptions, reconnect with exponential backoff and jitter, and (delta)
// initial_resource_versions on reconnect. What a resource means is decided by a
// handler (pkg/compile): it accepts or rejects each response, and a rejection
// becomes a NACK carrying the handler's reason while the last good config stays
// in force.
package xds

import "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

// Type URLs of the resources kmesh consumes.
const (
	AddressType       = "type.googleapis.com/istio.workload.Address"
	AuthorizationType = "type.googleapis.com/istio.security.Authorization"

	ClusterType  = resource.ClusterType
	EndpointType = resource.EndpointType
	ListenerType = resource.ListenerType
	RouteType    = resource.RouteType
)

// WorkloadTypes are the delta types of the Workload API, in subscription order
// (addresses first: policies refer to workloads).
var WorkloadTypes = []string{AddressType, AuthorizationType}

// EnvoyTypes are the SotW types, in Envoy's warming order.
var EnvoyTypes = []string{ClusterType, EndpointType, ListenerType, RouteType}

// ShortType is a readable name for logs and metrics labels.
func ShortType(typeURL string) string {
	switch typeURL {
	case AddressType:
		return "Address"
	case AuthorizationType:
		return "Authorization"
	case ClusterType:
		return "CDS"
	case EndpointType:
		return "EDS"
	case ListenerType:
		return "LDS"
	case RouteType:
		return "RDS"
	}
	return typeURL
}
