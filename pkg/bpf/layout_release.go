//go:build !kmesh_layout_next

package bpf

// LayoutVersion is the map layout of this build (KM_LAYOUT_VERSION in
// bpf/lib/structs.h). 2: km_svc_rec carries small services' slots inline.
const LayoutVersion = 2
