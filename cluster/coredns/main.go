// Command coredns is CoreDNS (github.com/coredns/coredns) with only the plugins a cluster's DNS needs:
// the cluster zone from the Kubernetes API, health and readiness endpoints, metrics, a cache, logs, and
// `bind` (to serve on chosen addresses, e.g. loopback in tests).
// There is no `forward` (nor `loop`, which only guards forwarding): names outside the cluster's zones
// are not resolved, since nothing may leave the machine.
//
// This is CoreDNS's own coredns.go with a shorter plugin list: plugin.cfg in CoreDNS decides the order
// in which plugins handle a query, so `directives` below keeps that file's order for the plugins kept.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
)

// directives lists the plugins a Corefile may name, in CoreDNS's plugin.cfg order (which is the order
// a query passes through them, whatever their order in the Corefile).
var directives = []string{
	"bind",
	"ready",
	"health",
	"prometheus",
	"errors",
	"log",
	"loadbalance",
	"cache",
	"kubernetes",
}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
