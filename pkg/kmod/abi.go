package kmod

// The ABI of kmesh.ko, mirrored from kmod/kmesh_abi.h (a unit test checks
// every value against the header, so the two cannot drift apart).

// ABIVersion is the module ABI this package (and the BPF objects built from
// bpf/) speaks. Ensure refuses a module of another version.
const ABIVersion = 3

// HTTP parser limits.
const (
	HTTPMaxHead    = 8192 // bytes of request head parsed
	HTTPMaxHeaders = 100  // header lines indexed
	HTTPMaxMethod  = 32   // method token length
)

// Parse status, as returned in kmesh_http_info.status.
const (
	HTTPOK         = 0
	HTTPIncomplete = 1
	HTTPTooLarge   = 2
	HTTPErrNotHTTP = -1
	HTTPErrReqLine = -2
	HTTPErrHeader  = -3
	HTTPErrHost    = -4
	HTTPErrVersion = -5
)

// Match flags of the bpf_kmesh_http_match_* kfuncs.
const (
	MatchExact   = 0
	MatchPrefix  = 1
	MatchSuffix  = 2
	MatchPresent = 3
	MatchNoCase  = 1 << 8
	MatchNoPort  = 1 << 9
)

// Fields of bpf_kmesh_http_copy.
const (
	HTTPFieldMethod = 0
	HTTPFieldTarget = 1
	HTTPFieldPath   = 2
	HTTPFieldHost   = 3
)

// Verdicts of a kmesh_l7_ops.route program.
const (
	L7Pass     = 0
	L7Redirect = 1
	L7NoRoute  = 2
)

// Generic netlink family.
const (
	GenlName    = "kmesh"
	GenlVersion = 1

	cmdHello       = 1
	cmdGetStats    = 2
	cmdSetSafeMode = 3

	attrABIVersion    = 1
	attrFeatures      = 2
	attrModuleVersion = 3
	attrSafeMode      = 4
	attrMaxHead       = 5
	attrMaxHeaders    = 6
	attrMaxDeferred   = 7
	attrStatParsed    = 8
	attrStatParseErrs = 9
	attrStatDeferred  = 10
	attrStatDecisions = 11
	attrStatRedirects = 12
	attrStatNoRoute   = 13
	attrStatFallbacks = 14
	attrStatRefused   = 15
	attrStatLive      = 16
	attrPad           = 17
)

// Features a module announces in its handshake.
type Features uint64

const (
	FeatureHTTPParser   Features = 1 << 0
	FeatureDeferConnect Features = 1 << 1
	FeatureL7Ops        Features = 1 << 2
	FeatureSafeMode     Features = 1 << 3

	// RequiredFeatures are what kernel-native mode uses.
	RequiredFeatures = FeatureHTTPParser | FeatureDeferConnect | FeatureL7Ops | FeatureSafeMode
)

func (f Features) String() string {
	names := []string{"http-parser", "defer-connect", "l7-ops", "safe-mode"}
	s := ""
	for i, n := range names {
		if f&(1<<i) != 0 {
			if s != "" {
				s += ","
			}
			s += n
		}
	}
	if s == "" {
		return "none"
	}
	return s
}
