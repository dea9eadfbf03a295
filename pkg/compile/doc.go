// Package compile turns control-plane resources into the dataplane, one
// direction and in small passes, each a plain function with its own tests:
//
//	convert  (workload.go, envoy.go)   xDS resource  → pkg/model object
//	validate (validate.go)             model object / snapshot → error naming the field
//	lower    (lower.go)                model changes → pkg/dataplane.API calls
//
// WorkloadState (dual-engine, Istio Workload API over delta xDS) and
// EnvoyState (kernel-native, Envoy xDS over SotW) hold the last good model and
// implement the pkg/xds handlers: a response is converted and validated before
// anything is lowered, and a rejected resource keeps its previous version in
// force while the client NACKs with the reason.
package compile
