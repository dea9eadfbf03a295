package kmod

import (
	"errors"
	"fmt"
	"os"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
)

// ErrFamilyNotFound means no generic netlink family "kmesh" exists: the module
// is not loaded (or is too old to have one).
var ErrFamilyNotFound = errors.New("generic netlink family " + GenlName + " not found")

// Conn is a generic netlink connection to kmesh.ko.
type Conn struct {
	c      *genetlink.Conn
	family genetlink.Family
}

// Info is the module's answer to the handshake.
type Info struct {
	ABIVersion    uint32
	Features      Features
	ModuleVersion string
	SafeMode      bool
	MaxHead       uint32 // HTTP head bytes parsed
	MaxHeaders    uint32 // header lines indexed
	MaxDeferred   uint32 // sockets marked or deferred at once
}

// Stats are the module's counters (monotonic since load, except Live).
type Stats struct {
	Parsed      uint64 // HTTP heads parsed (kfunc calls and first sends)
	ParseErrors uint64 // of those, malformed
	Deferred    uint64 // connects deferred
	Decisions   uint64 // kmesh_l7_ops.route calls
	Redirects   uint64 // decisions that redirected
	NoRoute     uint64 // decisions that said no route
	Fallbacks   uint64 // plain TCP to the original destination without a decision
	Refused     uint64 // deferrals refused (safe mode, capacity, ineligible socket)
	Live        uint64 // sockets marked or deferred right now
	SafeMode    bool
}

// Dial opens a generic netlink socket and resolves the kmesh family. It returns
// an error wrapping ErrFamilyNotFound when the module is not loaded.
func Dial() (*Conn, error) {
	c, err := genetlink.Dial(nil)
	if err != nil {
		return nil, fmt.Errorf("kmod: generic netlink: %w", err)
	}
	// Extended acks carry the module's error messages (NL_SET_ERR_MSG).
	_ = c.SetOption(netlink.ExtendedAcknowledge, true)
	f, err := c.GetFamily(GenlName)
	if err != nil {
		c.Close()
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("kmod: %w", ErrFamilyNotFound)
		}
		return nil, fmt.Errorf("kmod: resolving genetlink family %s: %w", GenlName, err)
	}
	return &Conn{c: c, family: f}, nil
}

// Close closes the connection.
func (c *Conn) Close() error { return c.c.Close() }

func (c *Conn) execute(cmd uint8, attrs func(*netlink.AttributeEncoder)) (*netlink.AttributeDecoder, error) {
	var data []byte
	if attrs != nil {
		ae := netlink.NewAttributeEncoder()
		attrs(ae)
		b, err := ae.Encode()
		if err != nil {
			return nil, err
		}
		data = b
	}
	msgs, err := c.c.Execute(genetlink.Message{
		Header: genetlink.Header{Command: cmd, Version: GenlVersion},
		Data:   data,
	}, c.family.ID, netlink.Request)
	if err != nil {
		return nil, err
	}
	if len(msgs) != 1 {
		return nil, fmt.Errorf("kmod: %d replies to command %d, want 1", len(msgs), cmd)
	}
	return netlink.NewAttributeDecoder(msgs[0].Data)
}

// Hello performs the version and feature handshake.
func (c *Conn) Hello() (Info, error) {
	return c.hello(0)
}

// hello sends abi (when non-zero) so the module itself checks compatibility.
func (c *Conn) hello(abi uint32) (Info, error) {
	var enc func(*netlink.AttributeEncoder)
	if abi != 0 {
		enc = func(ae *netlink.AttributeEncoder) { ae.Uint32(attrABIVersion, abi) }
	}
	ad, err := c.execute(cmdHello, enc)
	if err != nil {
		return Info{}, fmt.Errorf("kmod: handshake: %w", err)
	}
	var in Info
	for ad.Next() {
		switch ad.Type() {
		case attrABIVersion:
			in.ABIVersion = ad.Uint32()
		case attrFeatures:
			in.Features = Features(ad.Uint64())
		case attrModuleVersion:
			in.ModuleVersion = ad.String()
		case attrSafeMode:
			in.SafeMode = ad.Uint8() != 0
		case attrMaxHead:
			in.MaxHead = ad.Uint32()
		case attrMaxHeaders:
			in.MaxHeaders = ad.Uint32()
		case attrMaxDeferred:
			in.MaxDeferred = ad.Uint32()
		}
	}
	if err := ad.Err(); err != nil {
		return Info{}, fmt.Errorf("kmod: decoding handshake: %w", err)
	}
	if in.ABIVersion == 0 {
		return Info{}, errors.New("kmod: handshake reply without an ABI version")
	}
	return in, nil
}

// Stats reads the module's counters.
func (c *Conn) Stats() (Stats, error) {
	ad, err := c.execute(cmdGetStats, nil)
	if err != nil {
		return Stats{}, fmt.Errorf("kmod: reading stats: %w", err)
	}
	var s Stats
	fields := map[uint16]*uint64{
		attrStatParsed: &s.Parsed, attrStatParseErrs: &s.ParseErrors, attrStatDeferred: &s.Deferred,
		attrStatDecisions: &s.Decisions, attrStatRedirects: &s.Redirects, attrStatNoRoute: &s.NoRoute,
		attrStatFallbacks: &s.Fallbacks, attrStatRefused: &s.Refused, attrStatLive: &s.Live,
	}
	for ad.Next() {
		if p, ok := fields[ad.Type()]; ok {
			*p = ad.Uint64()
		} else if ad.Type() == attrSafeMode {
			s.SafeMode = ad.Uint8() != 0
		}
	}
	if err := ad.Err(); err != nil {
		return Stats{}, fmt.Errorf("kmod: decoding stats: %w", err)
	}
	return s, nil
}

// SetSafeMode switches safe mode: when on, new sockets are never deferred
// (they stay plain TCP and the L4 dataplane routes them); sockets already
// deferred finish normally. Needs CAP_NET_ADMIN.
func (c *Conn) SetSafeMode(on bool) error {
	var v uint8
	if on {
		v = 1
	}
	ad, err := c.execute(cmdSetSafeMode, func(ae *netlink.AttributeEncoder) { ae.Uint8(attrSafeMode, v) })
	if err != nil {
		return fmt.Errorf("kmod: setting safe mode: %w", err)
	}
	for ad.Next() {
		if ad.Type() == attrSafeMode && (ad.Uint8() != 0) != on {
			return fmt.Errorf("kmod: safe mode is %v after setting it to %v", !on, on)
		}
	}
	return ad.Err()
}
