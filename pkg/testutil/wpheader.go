package testutil

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
)

// Waypoint headers as a waypoint reads them: an independent Go reading of
// the two formats kmesh's sk_msg program writes (bpf/lib/waypoint.h), for
// tests that play the waypoint.

// WaypointHeader is a parsed waypoint header.
type WaypointHeader struct {
	Src netip.AddrPort // the client (PROXY v2 only)
	Dst netip.AddrPort // the original destination
	Raw []byte         // the header bytes exactly as received
}

var proxyV2Sig = []byte{0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A}

// ReadProxyV2 reads a PROXY protocol v2 header (PROXY command, TCP over IPv4
// or IPv6) from r.
func ReadProxyV2(r *bufio.Reader) (WaypointHeader, error) {
	var h WaypointHeader
	fixed := make([]byte, 16)
	if _, err := io.ReadFull(r, fixed); err != nil {
		return h, fmt.Errorf("PROXY v2 header: %w", err)
	}
	if !bytes.Equal(fixed[:12], proxyV2Sig) {
		return h, fmt.Errorf("PROXY v2 header: bad signature % x", fixed[:12])
	}
	if fixed[12] != 0x21 {
		return h, fmt.Errorf("PROXY v2 header: version/command %#x, want 0x21 (v2 PROXY)", fixed[12])
	}
	n := int(binary.BigEndian.Uint16(fixed[14:16]))
	rest := make([]byte, n)
	if _, err := io.ReadFull(r, rest); err != nil {
		return h, fmt.Errorf("PROXY v2 header: %d address bytes: %w", n, err)
	}
	h.Raw = append(fixed, rest...)
	switch fixed[13] {
	case 0x11:
		if n < 12 {
			return h, fmt.Errorf("PROXY v2 header: TCP/IPv4 with length %d", n)
		}
		src := netip.AddrFrom4([4]byte(rest[0:4]))
		dst := netip.AddrFrom4([4]byte(rest[4:8]))
		h.Src = netip.AddrPortFrom(src, binary.BigEndian.Uint16(rest[8:10]))
		h.Dst = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(rest[10:12]))
	case 0x21:
		if n < 36 {
			return h, fmt.Errorf("PROXY v2 header: TCP/IPv6 with length %d", n)
		}
		src := netip.AddrFrom16([16]byte(rest[0:16]))
		dst := netip.AddrFrom16([16]byte(rest[16:32]))
		h.Src = netip.AddrPortFrom(src, binary.BigEndian.Uint16(rest[32:34]))
		h.Dst = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(rest[34:36]))
	default:
		return h, fmt.Errorf("PROXY v2 header: family/protocol %#x, want 0x11 or 0x21", fixed[13])
	}
	return h, nil
}

// ReadKmeshTLV reads upstream Kmesh's waypoint TLVs from r: 0x01 (original
// destination: 4- or 16-byte address and a port, big endian) and the end
// marker 0xfe with length 0.
func ReadKmeshTLV(r *bufio.Reader) (WaypointHeader, error) {
	var h WaypointHeader
	for i := 0; i < 4; i++ {
		tl := make([]byte, 5)
		if _, err := io.ReadFull(r, tl); err != nil {
			return h, fmt.Errorf("kmesh TLV: %w", err)
		}
		h.Raw = append(h.Raw, tl...)
		n := binary.BigEndian.Uint32(tl[1:5])
		switch tl[0] {
		case 0x01:
			if n != 6 && n != 18 {
				return h, fmt.Errorf("kmesh TLV: original destination of length %d", n)
			}
			v := make([]byte, n)
			if _, err := io.ReadFull(r, v); err != nil {
				return h, fmt.Errorf("kmesh TLV: %w", err)
			}
			h.Raw = append(h.Raw, v...)
			ip, _ := netip.AddrFromSlice(v[:n-2])
			h.Dst = netip.AddrPortFrom(ip, binary.BigEndian.Uint16(v[n-2:]))
		case 0xfe:
			if n != 0 {
				return h, fmt.Errorf("kmesh TLV: end marker with length %d", n)
			}
			if !h.Dst.IsValid() {
				return h, fmt.Errorf("kmesh TLV: end before the original destination")
			}
			return h, nil
		default:
			return h, fmt.Errorf("kmesh TLV: unknown type %#x", tl[0])
		}
	}
	return h, fmt.Errorf("kmesh TLV: no end marker")
}
