// Package bpf loads kmesh's L4 dataplane into the kernel and keeps it there:
// it creates (or adopts, or migrates) the pinned maps, loads the programs
// against them, attaches them once to a cgroup with pinned bpf_links, and on a
// later start replaces the programs atomically with link updates. Nothing it
// creates depends on the daemon process staying alive.
//
// Pins live under one directory of a bpffs mount (Options.PinDir):
//
//	maps/<name>    every map, plus km_layout (the layout record)
//	links/<prog>   one cgroup bpf_link per attached program
//	progs/km_sk_msg the sk_msg program attached to km_sockhash (no link type on 6.1)
package bpf

import (
	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/pkg/bpf/objs"
)

// Generated key/value types of the dataplane maps (bpf/lib/structs.h). They
// come from the release build or, with -tags kmesh_layout_next, from the
// layout-next test build; code using them compiles against either.
type (
	FrontendKey  = objs.SockConnectKmFeKey
	FrontendVal  = objs.SockConnectKmFeVal
	SvcKey       = objs.SockConnectKmSvcKey
	SvcRec       = objs.SockConnectKmSvcRec
	SlotKey      = objs.SockConnectKmSlotKey
	Slot         = objs.SockConnectKmSlot
	Enrol        = objs.SockConnectKmEnrol
	Config       = objs.SockConnectKmCfg
	SockState    = objs.SockConnectKmSockState
	SockKey      = objs.SockConnectKmSockKey
	ConnEventRaw = objs.SockopsKmConnEvent
	FlipArgs     = objs.ControlKmFlipArgs
	LBTestArgs   = objs.LbSelectLbTestArgs
	WaypointKey  = objs.SockConnectKmWpKey
	WaypointVal  = objs.SockConnectKmWpVal
	WpHeaderArgs = objs.WpHeaderWpHeaderArgs
)

// The record's inline slot array is InlineSlots long (a compile error otherwise).
var _ [InlineSlots]Slot = SvcRec{}.Slots

// Limits compiled into the BPF objects (bpf/lib/structs.h).
const (
	MaxPorts    = 10
	MaxTiers    = 8
	Families    = 2
	FamV4       = 0
	FamV6       = 1
	MaxServices = 65536
	// InlineSlots is how many slots a generation record holds itself
	// (KM_INLINE_SLOTS): a generation of at most this many slots in all
	// families and tiers is written inline (RecInline), never to km_endpoint.
	InlineSlots = 16
	// RecInline is km_svc_rec's flag (KM_REC_INLINE): Slots holds the
	// generation's slots, family-major, tier-minor, in index order.
	RecInline = 1 << 0
	// MaxWaypoints is km_waypoint's size (KM_MAX_WAYPOINTS).
	MaxWaypoints = 131072
	// WpHeaderMax is the longest waypoint header (PROXY v2, IPv6).
	WpHeaderMax = 52
)

// Waypoint actions of km_wp_val (enum km_wp_action).
const (
	WpRedirect = 1 // connect to an instance of the waypoint service
	WpBypass   = 2 // server-first port: load-balanced directly
	WpRefuse   = 3 // waypoint required but unusable: ECONNREFUSED
)

// Algorithm and locality codes of km_svc_rec (enum km_lb_algorithm,
// enum km_locality_mode).
const (
	AlgRandom     = 0
	AlgRoundRobin = 1
	AlgWeighted   = 2

	LocNone     = 0
	LocStrict   = 1
	LocFailover = 2
)

// Endpoint flags (KM_EP_*), config flags (KM_CFG_*) and socket flags (KM_SK_*).
const (
	EndpointLocal = 1 << 0

	EnrolWaypoint = 1 << 0 // KM_ENROL_WAYPOINT: a waypoint instance, never redirected

	ConfigAccel       = 1 << 0
	ConfigWpTLV       = 1 << 1 // waypoint header: Kmesh TLV instead of PROXY v2
	ConfigWlWaypoints = 1 << 2 // km_waypoint holds workload-address entries
	// ConfigNoSvcWaypoints: km_waypoint holds no service entries (connects
	// to VIPs skip the lookup); inverted so an older km_config means "look".
	ConfigNoSvcWaypoints = 1 << 3
	ConfigNoEvents       = 1 << 4 // monitoring off: sockops and sk_msg write no connection records

	SockEnrolled  = 1 << 0
	SockRewritten = 1 << 1
	SockTracked   = 1 << 2
	SockLocalDst  = 1 << 3
	SockAccel     = 1 << 4
	SockListener  = 1 << 5
	SockWaypoint  = 1 << 6 // connect() was sent to a waypoint
	SockWpHeader  = 1 << 7 // waypoint header not written yet
)

// Stat indexes km_stats (enum km_stat).
type Stat uint32

const (
	StatConnectLB Stat = iota
	StatConnectRefused
	StatConnectUnenrolled
	StatLookupMiss
	StatFrontendRecycled
	StatEventsDropped
	StatAccelInsert
	StatAccelRedirect
	StatWaypointRedirect
	StatWaypointBypass
	StatWaypointExempt
	StatWaypointRefused
	StatWaypointHeader
	StatWaypointHeaderErr
	StatMax
)

var statNames = [...]string{"connect_lb", "connect_refused", "connect_unenrolled", "lookup_miss",
	"frontend_recycled", "events_dropped", "accel_insert", "accel_redirect",
	"waypoint_redirect", "waypoint_bypass", "waypoint_exempt", "waypoint_refused", "waypoint_header", "waypoint_header_err"}

func (s Stat) String() string {
	if int(s) < len(statNames) {
		return statNames[s]
	}
	return "unknown"
}

// Map names (BPF_OBJ_NAME_LEN is 16, hence the short names).
const (
	MapFrontend  = "km_frontend"
	MapSvcActive = "km_svc_active"
	MapSvcGen    = "km_svc_gen"
	MapEndpoint  = "km_endpoint"
	MapRR        = "km_rr"
	MapEnrolCg   = "km_enrol_cg"
	MapEnrolNs   = "km_enrol_ns"
	MapConfig    = "km_config"
	MapStats     = "km_stats"
	MapSock      = "km_sock"
	MapSockhash  = "km_sockhash"
	MapAccelRx   = "km_accel_rx"
	MapListen    = "km_listen"
	MapWaypoint  = "km_waypoint"
	MapEvents    = "km_events"
	MapLayout    = "km_layout"
)

// object is one compiled entry file and the programs it attaches.
type object struct {
	name  string
	load  func() (*ebpf.CollectionSpec, error)
	progs []attachPoint
}

// attachPoint is a program and where it goes. sockhash programs attach to
// km_sockhash, every other one to the cgroup.
type attachPoint struct {
	prog     string
	attach   ebpf.AttachType
	sockhash bool
}

// objects lists the attached entry files. Programs are replaced in this order
// on restart: readers of socket state before its writers.
var objects = []object{
	{name: "sock_connect", load: objs.LoadSockConnect, progs: []attachPoint{
		{prog: "km_getpeername4", attach: ebpf.AttachCgroupInet4GetPeername},
		{prog: "km_getpeername6", attach: ebpf.AttachCgroupInet6GetPeername},
		{prog: "km_connect4", attach: ebpf.AttachCGroupInet4Connect},
		{prog: "km_connect6", attach: ebpf.AttachCGroupInet6Connect},
	}},
	{name: "sockops", load: objs.LoadSockops, progs: []attachPoint{
		{prog: "km_sockops", attach: ebpf.AttachCGroupSockOps},
	}},
	{name: "sock_create", load: objs.LoadSockCreate, progs: []attachPoint{
		{prog: "km_sock_create", attach: ebpf.AttachCGroupInetSockCreate},
	}},
	{name: "sk_msg", load: objs.LoadSkMsg, progs: []attachPoint{
		{prog: "km_sk_msg", attach: ebpf.AttachSkMsgVerdict, sockhash: true},
	}},
}

// AttachedPrograms lists every attached program name, in replacement order.
func AttachedPrograms() []string {
	var out []string
	for _, o := range objects {
		for _, p := range o.progs {
			out = append(out, p.prog)
		}
	}
	return out
}
