//go:build !vmguest

// Not in the VM tier: the guest has no source tree to read the header from.

package kmod

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// parseABIHeader reads the #defines and enum constants of kmod/kmesh_abi.h.
func parseABIHeader(t *testing.T) map[string]int64 {
	t.Helper()
	src, err := os.ReadFile("../../kmod/kmesh_abi.h")
	if err != nil {
		t.Fatal(err)
	}
	vals := map[string]int64{}
	def := regexp.MustCompile(`^#define\s+(KMESH_[A-Z0-9_]+)\s+(.+?)\s*(/\*.*)?$`)
	shift := regexp.MustCompile(`^\(?1u?l?l?\s*<<\s*(\d+)\)?$`)
	inEnum := false
	next := int64(0)
	for _, line := range strings.Split(string(src), "\n") {
		line = strings.TrimSpace(line)
		if m := def.FindStringSubmatch(line); m != nil {
			v := strings.TrimSpace(m[2])
			if s := shift.FindStringSubmatch(v); s != nil {
				n, _ := strconv.Atoi(s[1])
				vals[m[1]] = 1 << n
				continue
			}
			v = strings.Trim(v, "()")
			if n, err := strconv.ParseInt(v, 0, 64); err == nil {
				vals[m[1]] = n
			}
			continue
		}
		if strings.HasPrefix(line, "enum kmesh_") {
			inEnum, next = true, 0
			continue
		}
		if inEnum {
			if strings.HasPrefix(line, "}") {
				inEnum = false
				continue
			}
			name := strings.TrimSpace(strings.SplitN(strings.SplitN(line, ",", 2)[0], "/*", 2)[0])
			if name != "" {
				vals[name] = next
				next++
			}
		}
	}
	return vals
}

// TestABIMatchesHeader keeps the Go mirror of the module ABI in step with
// kmod/kmesh_abi.h, the header the module and the BPF programs compile with.
func TestABIMatchesHeader(t *testing.T) {
	h := parseABIHeader(t)
	want := map[string]int64{
		"KMESH_ABI_VERSION": ABIVersion, "KMESH_HTTP_MAX_HEAD": HTTPMaxHead,
		"KMESH_HTTP_MAX_HEADERS": HTTPMaxHeaders, "KMESH_HTTP_MAX_METHOD": HTTPMaxMethod,
		"KMESH_HTTP_OK": HTTPOK, "KMESH_HTTP_INCOMPLETE": HTTPIncomplete, "KMESH_HTTP_TOO_LARGE": HTTPTooLarge,
		"KMESH_HTTP_E_NOT_HTTP": HTTPErrNotHTTP, "KMESH_HTTP_E_REQLINE": HTTPErrReqLine,
		"KMESH_HTTP_E_HEADER": HTTPErrHeader, "KMESH_HTTP_E_HOST": HTTPErrHost, "KMESH_HTTP_E_VERSION": HTTPErrVersion,
		"KMESH_MATCH_EXACT": MatchExact, "KMESH_MATCH_PREFIX": MatchPrefix, "KMESH_MATCH_SUFFIX": MatchSuffix,
		"KMESH_MATCH_PRESENT": MatchPresent, "KMESH_MATCH_NOCASE": MatchNoCase, "KMESH_MATCH_NO_PORT": MatchNoPort,
		"KMESH_HTTP_FIELD_METHOD": HTTPFieldMethod, "KMESH_HTTP_FIELD_TARGET": HTTPFieldTarget,
		"KMESH_HTTP_FIELD_PATH": HTTPFieldPath, "KMESH_HTTP_FIELD_HOST": HTTPFieldHost,
		"KMESH_L7_PASS": L7Pass, "KMESH_L7_REDIRECT": L7Redirect, "KMESH_L7_NO_ROUTE": L7NoRoute,
		"KMESH_GENL_VERSION": GenlVersion,
		"KMESH_CMD_HELLO":    cmdHello, "KMESH_CMD_GET_STATS": cmdGetStats, "KMESH_CMD_SET_SAFE_MODE": cmdSetSafeMode,
		"KMESH_ATTR_ABI_VERSION": attrABIVersion, "KMESH_ATTR_FEATURES": attrFeatures,
		"KMESH_ATTR_MODULE_VERSION": attrModuleVersion, "KMESH_ATTR_SAFE_MODE": attrSafeMode,
		"KMESH_ATTR_MAX_HEAD": attrMaxHead, "KMESH_ATTR_MAX_HEADERS": attrMaxHeaders,
		"KMESH_ATTR_MAX_DEFERRED": attrMaxDeferred, "KMESH_ATTR_STAT_PARSED": attrStatParsed,
		"KMESH_ATTR_STAT_PARSE_ERRORS": attrStatParseErrs, "KMESH_ATTR_STAT_DEFERRED": attrStatDeferred,
		"KMESH_ATTR_STAT_DECISIONS": attrStatDecisions, "KMESH_ATTR_STAT_REDIRECTS": attrStatRedirects,
		"KMESH_ATTR_STAT_NO_ROUTE": attrStatNoRoute, "KMESH_ATTR_STAT_FALLBACKS": attrStatFallbacks,
		"KMESH_ATTR_STAT_REFUSED": attrStatRefused, "KMESH_ATTR_STAT_LIVE": attrStatLive, "KMESH_ATTR_PAD": attrPad,
		"KMESH_FEAT_HTTP_PARSER": int64(FeatureHTTPParser), "KMESH_FEAT_DEFER_CONNECT": int64(FeatureDeferConnect),
		"KMESH_FEAT_L7_OPS": int64(FeatureL7Ops), "KMESH_FEAT_SAFE_MODE": int64(FeatureSafeMode),
	}
	for name, v := range want {
		got, ok := h[name]
		if !ok {
			t.Errorf("%s: not found in kmesh_abi.h", name)
			continue
		}
		if got != v {
			t.Errorf("%s: header says %d, Go says %d", name, got, v)
		}
	}
	if h["__KMESH_ATTR_MAX"] != attrPad+1 {
		t.Errorf("kmesh_abi.h has attributes after KMESH_ATTR_PAD that pkg/kmod does not know")
	}
}

func TestFeaturesString(t *testing.T) {
	if s := (FeatureHTTPParser | FeatureL7Ops).String(); s != "http-parser,l7-ops" {
		t.Fatalf("got %q", s)
	}
	if s := Features(0).String(); s != "none" {
		t.Fatalf("got %q", s)
	}
}
