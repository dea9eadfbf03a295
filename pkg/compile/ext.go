package compile

import (
	"fmt"

	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/pkg/model"
)

// The Workload API has no field for some of kmesh's model; these travel as
// workloadapi.Extension entries (Istio's mechanism for vendor data), so the
// embedded control plane speaks the same API as istiod. istiod never sets
// them, and their absence means the Istio defaults.
const (
	// ExtLBAlgorithm on a Service: google.protobuf.StringValue holding a
	// model.LBAlgorithm ("random", "round_robin", "weighted").
	ExtLBAlgorithm = "kmesh-go.io/lb-algorithm"
	// ExtEnrolment on a Workload: google.protobuf.Struct {"cgroup": path,
	// "netns": path}; the local processes that belong to the workload.
	ExtEnrolment = "kmesh-go.io/enrolment"
	// ExtServerFirst on a Service or Workload: google.protobuf.Struct
	// {"ports": [service ports whose protocol is server-first] (services
	// only), "policy": "bypass" | "refuse"} (what the object's waypoint does
	// with those ports; see model.ServerFirstPolicy).
	ExtServerFirst = "kmesh-go.io/server-first"
)

// LBAlgorithmExtension encodes a for Service.extensions.
func LBAlgorithmExtension(a model.LBAlgorithm) *workloadapi.Extension {
	cfg, _ := anypb.New(wrapperspb.String(string(a)))
	return &workloadapi.Extension{Name: ExtLBAlgorithm, Config: cfg}
}

// EnrolmentExtension encodes e for Workload.extensions.
func EnrolmentExtension(e model.Enrolment) *workloadapi.Extension {
	m := map[string]any{}
	if e.CgroupPath != "" {
		m["cgroup"] = e.CgroupPath
	}
	if e.NetnsPath != "" {
		m["netns"] = e.NetnsPath
	}
	st, _ := structpb.NewStruct(m)
	cfg, _ := anypb.New(st)
	return &workloadapi.Extension{Name: ExtEnrolment, Config: cfg}
}

func decodeLBAlgorithm(x *workloadapi.Extension) (model.LBAlgorithm, error) {
	var v wrapperspb.StringValue
	if err := x.GetConfig().UnmarshalTo(&v); err != nil {
		return "", fmt.Errorf("extension %s: %w", x.GetName(), err)
	}
	return model.LBAlgorithm(v.GetValue()), nil
}

func decodeEnrolment(x *workloadapi.Extension) (*model.Enrolment, error) {
	var st structpb.Struct
	if err := x.GetConfig().UnmarshalTo(&st); err != nil {
		return nil, fmt.Errorf("extension %s: %w", x.GetName(), err)
	}
	e := &model.Enrolment{}
	for k, v := range st.GetFields() {
		s, ok := v.GetKind().(*structpb.Value_StringValue)
		if !ok {
			return nil, fmt.Errorf("extension %s: field %q is not a string", x.GetName(), k)
		}
		switch k {
		case "cgroup":
			e.CgroupPath = s.StringValue
		case "netns":
			e.NetnsPath = s.StringValue
		default:
			return nil, fmt.Errorf("extension %s: unknown field %q", x.GetName(), k)
		}
	}
	return e, nil
}

// ServerFirstExtension encodes server-first ports and the waypoint policy
// for them (either may be empty).
func ServerFirstExtension(ports []uint16, policy model.ServerFirstPolicy) *workloadapi.Extension {
	m := map[string]any{}
	if len(ports) > 0 {
		l := make([]any, len(ports))
		for i, p := range ports {
			l[i] = float64(p)
		}
		m["ports"] = l
	}
	if policy != "" {
		m["policy"] = string(policy)
	}
	st, _ := structpb.NewStruct(m)
	cfg, _ := anypb.New(st)
	return &workloadapi.Extension{Name: ExtServerFirst, Config: cfg}
}

func decodeServerFirst(x *workloadapi.Extension) (ports []uint16, policy model.ServerFirstPolicy, err error) {
	var st structpb.Struct
	if err := x.GetConfig().UnmarshalTo(&st); err != nil {
		return nil, "", fmt.Errorf("extension %s: %w", x.GetName(), err)
	}
	for k, v := range st.GetFields() {
		switch k {
		case "ports":
			for i, e := range v.GetListValue().GetValues() {
				n, ok := e.GetKind().(*structpb.Value_NumberValue)
				if !ok || n.NumberValue < 1 || n.NumberValue > 65535 || n.NumberValue != float64(uint16(n.NumberValue)) {
					return nil, "", fmt.Errorf("extension %s: ports[%d] is not a port", x.GetName(), i)
				}
				ports = append(ports, uint16(n.NumberValue))
			}
		case "policy":
			switch p := model.ServerFirstPolicy(v.GetStringValue()); p {
			case model.ServerFirstBypass, model.ServerFirstRefuse:
				policy = p
			default:
				return nil, "", fmt.Errorf("extension %s: policy %q (bypass or refuse)", x.GetName(), v.GetStringValue())
			}
		default:
			return nil, "", fmt.Errorf("extension %s: unknown field %q", x.GetName(), k)
		}
	}
	return ports, policy, nil
}
