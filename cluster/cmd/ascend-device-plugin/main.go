// Command ascend-device-plugin is a stand-in for MindCluster's Ascend device plugin on nodes without
// NPUs. It speaks the kubelet's device-plugin API (k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1):
// it registers huawei.com/Ascend910 with the kubelet, advertises --count healthy NPUs (Ascend910-0,
// Ascend910-1, ...), and answers Allocate with what a container on an Ascend node gets:
// ASCEND_VISIBLE_DEVICES and ASCEND_RUNTIME_OPTIONS (set by ascend-device-plugin), and the device
// nodes /dev/davinci<N>, /dev/davinci_manager, /dev/devmm_svm, /dev/hisi_hdc and the driver folder
// /usr/local/Ascend/driver read-only (added by Ascend Docker Runtime on a real node). The device nodes
// are made in --device-dir as character devices with /dev/null's numbers, owned root:HwHiAiUser,
// mode 0660. docs/ascend-device-plugin.md says which parts follow ascend-device-plugin and which are
// simplified.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

func main() {
	cfg := Config{}
	var makeDevices bool
	var uid, gid int
	var poll time.Duration
	flag.StringVar(&cfg.ResourceName, "resource", "huawei.com/Ascend910", "extended resource to advertise")
	flag.IntVar(&cfg.Count, "count", 8, "number of NPUs the node advertises")
	flag.StringVar(&cfg.PluginDir, "plugin-dir", pluginapi.DevicePluginPath, "the kubelet's device-plugin folder (holds kubelet.sock)")
	flag.StringVar(&cfg.DeviceDir, "device-dir", "", "folder of the node's device nodes (davinci<N>, davinci_manager, devmm_svm, hisi_hdc)")
	flag.StringVar(&cfg.DriverDir, "driver-dir", "", "host folder mounted read-only at /usr/local/Ascend/driver (empty: no mount)")
	flag.BoolVar(&makeDevices, "make-devices", true, "create the device nodes in --device-dir at start")
	flag.IntVar(&uid, "device-uid", 0, "owner of the device nodes made (root)")
	flag.IntVar(&gid, "device-gid", 1000, "group of the device nodes made (HwHiAiUser's GID; MindCluster's default is 1000)")
	flag.DurationVar(&poll, "poll", time.Second, "how often to check that the kubelet and the plugin's socket are still there")
	flag.Parse()
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(2)
	}
	for _, dir := range []*string{&cfg.PluginDir, &cfg.DeviceDir, &cfg.DriverDir} {
		if *dir != "" {
			abs, err := filepath.Abs(*dir)
			if err != nil {
				fmt.Fprintln(os.Stderr, "error:", err)
				os.Exit(2)
			}
			*dir = abs
		}
	}
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, time.Now().UTC().Format(time.RFC3339)+" ascend-device-plugin: "+format+"\n", args...)
	}
	if makeDevices {
		paths, err := MakeDeviceNodes(cfg.DeviceDir, cfg.Count, uid, gid)
		if err != nil {
			fmt.Fprintln(os.Stderr, "error:", err)
			os.Exit(1)
		}
		logf("made %d device nodes in %s (owner %d:%d, mode 0660)", len(paths), cfg.DeviceDir, uid, gid)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := Run(ctx, cfg, poll, logf); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
