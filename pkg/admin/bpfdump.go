package admin

// BPFDump is the decoded content of the dataplane's maps (/debug/bpf).
// Decoding is the dataplane's job (it knows the layouts); the admin API and
// kmeshctl only carry and render it.
type BPFDump struct {
	// Layout is the dataplane's map layout version.
	Layout string    `json:"layout,omitempty"`
	Maps   []MapDump `json:"maps"`
}

// MapDump is one map. Columns fixes the column order for tables; every row has
// a value for each column.
type MapDump struct {
	Name       string              `json:"name"`
	Type       string              `json:"type"`
	MaxEntries uint32              `json:"maxEntries"`
	Entries    int                 `json:"entries"`
	Columns    []string            `json:"columns,omitempty"`
	Rows       []map[string]string `json:"rows,omitempty"`
	// Truncated is set when Rows holds only the first entries of a large map.
	Truncated bool `json:"truncated,omitempty"`
	// Note says why rows are missing (e.g. socket maps are only counted).
	Note string `json:"note,omitempty"`
}
