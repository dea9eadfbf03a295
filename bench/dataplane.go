package bench

// dataplaneScenarios are the kmesh dual-engine scenarios (connect-time load
// balancing through a service VIP, and the same with same-node sk_msg
// acceleration). They plug in here once pkg/dataplane lands on main.
func dataplaneScenarios() []Scenario { return nil }
