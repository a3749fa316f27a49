package main

import (
	"context"
	"os"
	"path/filepath"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// Run serves the plugin and registers it with the kubelet, and does both again whenever the kubelet
// restarts (kubelet.sock replaced, or the plugin's socket removed: a starting kubelet empties its
// device-plugin folder), as device plugins must. It waits for kubelet.sock when it is not there yet,
// and returns when ctx ends, with the socket removed.
func Run(ctx context.Context, cfg Config, poll time.Duration, logf func(string, ...any)) error {
	kubelet := filepath.Join(cfg.PluginDir, filepath.Base(pluginapi.KubeletSocket))
	waiting := false
	for {
		kubeletInfo, err := os.Stat(kubelet)
		if err != nil {
			if !waiting {
				logf("waiting for the kubelet's socket %s", kubelet)
				waiting = true
			}
			if !sleep(ctx, poll) {
				return nil
			}
			continue
		}
		waiting = false
		srv, err := Serve(cfg)
		if err != nil {
			return err
		}
		if err := Register(ctx, cfg); err != nil {
			srv.Stop()
			logf("%v; retrying", err)
			if !sleep(ctx, poll) {
				return nil
			}
			continue
		}
		logf("registered %s (%d devices) with the kubelet at %s, serving %s", cfg.ResourceName, cfg.Count, kubelet, srv.socket)
		for {
			if !sleep(ctx, poll) {
				srv.Stop()
				return nil
			}
			now, err := os.Stat(kubelet)
			if err != nil || !os.SameFile(now, kubeletInfo) {
				logf("the kubelet's socket changed: serving and registering again")
				break
			}
			if _, err := os.Stat(srv.socket); err != nil {
				logf("the plugin's socket %s is gone (the kubelet restarted): serving and registering again", srv.socket)
				break
			}
		}
		srv.Stop()
	}
}

// sleep waits d, or returns false at once when ctx ends.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
