// Command pause is the pod sandbox's process: it holds the pod's namespaces, reaps the zombies it
// inherits as the pod's PID 1, and exits 0 on SIGINT or SIGTERM (what registry.k8s.io/pause does).
// Only the standard library, so the binary is static and is the whole image.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
