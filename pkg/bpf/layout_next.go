//go:build kmesh_layout_next

package bpf

// LayoutVersion of the layout-next test build: km_slot gains a field in the
// middle, so pinned km_endpoint entries and the inline slots of km_svc_gen
// records must be migrated field by field.
const LayoutVersion = 3
