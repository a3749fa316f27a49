package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// What MindCluster's ascend-device-plugin and Ascend Docker Runtime put into a container.
const (
	// VisibleDevicesEnv lists the allocated NPUs' physical ids, comma-separated ("0,1").
	VisibleDevicesEnv = "ASCEND_VISIBLE_DEVICES"
	// RuntimeOptionsEnv is empty for physical NPUs ("VIRTUAL" for vNPUs, which the stand-in has not).
	RuntimeOptionsEnv = "ASCEND_RUNTIME_OPTIONS"
	// DriverContainerPath is where the driver's libraries and tools are seen in the container.
	DriverContainerPath = "/usr/local/Ascend/driver"
	// devicePrefix is the per-NPU device node: /dev/davinci<phy id>.
	devicePrefix = "davinci"
)

// SharedDevices are the device nodes every NPU container gets besides its /dev/davinci<N>.
var SharedDevices = []string{"davinci_manager", "devmm_svm", "hisi_hdc"}

// Config is what one plugin instance advertises and hands out.
type Config struct {
	// ResourceName is the extended resource, e.g. huawei.com/Ascend910.
	ResourceName string
	// Count is how many NPUs the node has; their ids are <type>-0 .. <type>-(Count-1).
	Count int
	// PluginDir is the kubelet's device-plugin folder: kubelet.sock is there, the plugin's socket goes there.
	PluginDir string
	// DeviceDir holds the node's device nodes (davinci<N>, davinci_manager, devmm_svm, hisi_hdc).
	DeviceDir string
	// DriverDir is the host folder mounted read-only at DriverContainerPath; empty: no mount.
	DriverDir string
}

// DeviceType is the resource name's part after the vendor domain ("Ascend910"), MindCluster's
// device-type prefix of device ids ("Ascend910-0").
func (c Config) DeviceType() string {
	if i := strings.LastIndex(c.ResourceName, "/"); i >= 0 {
		return c.ResourceName[i+1:]
	}
	return c.ResourceName
}

// Endpoint is the plugin socket's file name inside PluginDir ("Ascend910.sock", as MindCluster names it).
func (c Config) Endpoint() string { return c.DeviceType() + ".sock" }

// DeviceIDs are the ids ListAndWatch advertises, in physical-id order.
func (c Config) DeviceIDs() []string {
	ids := make([]string, c.Count)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%d", c.DeviceType(), i)
	}
	return ids
}

// Validate names the field that is wrong and how to fix it.
func (c Config) Validate() error {
	switch {
	case !strings.Contains(c.ResourceName, "/"):
		return fmt.Errorf("--resource %q is not an extended resource name: use a vendor domain, e.g. huawei.com/Ascend910", c.ResourceName)
	case c.Count < 1:
		return fmt.Errorf("--count %d: a node advertises at least one NPU", c.Count)
	case c.PluginDir == "":
		return errors.New("--plugin-dir is empty: give the kubelet's device-plugin folder (the one holding kubelet.sock)")
	case c.DeviceDir == "":
		return errors.New("--device-dir is empty: give the folder holding the node's device nodes")
	}
	return nil
}

// Plugin implements the kubelet's DevicePlugin service for one resource.
type Plugin struct {
	pluginapi.UnimplementedDevicePluginServer
	cfg  Config
	stop chan struct{}
	once sync.Once
}

// NewPlugin returns a plugin serving cfg; Stop ends its ListAndWatch streams.
func NewPlugin(cfg Config) *Plugin {
	return &Plugin{cfg: cfg, stop: make(chan struct{})}
}

// Stop ends every ListAndWatch stream (the kubelet then sees the devices go away).
func (p *Plugin) Stop() { p.once.Do(func() { close(p.stop) }) }

// GetDevicePluginOptions answers as ascend-device-plugin does: no PreStartContainer call, no
// preferred allocation.
func (p *Plugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{}, nil
}

// ListAndWatch sends every NPU as Healthy once, then holds the stream open until the kubelet or
// Stop closes it (the stand-in's devices never change health).
func (p *Plugin) ListAndWatch(_ *pluginapi.Empty, stream grpc.ServerStreamingServer[pluginapi.ListAndWatchResponse]) error {
	resp := &pluginapi.ListAndWatchResponse{}
	for _, id := range p.cfg.DeviceIDs() {
		resp.Devices = append(resp.Devices, &pluginapi.Device{ID: id, Health: pluginapi.Healthy})
	}
	if err := stream.Send(resp); err != nil {
		return err
	}
	select {
	case <-stream.Context().Done():
	case <-p.stop:
	}
	return nil
}

// GetPreferredAllocation is not offered (GetDevicePluginOptions says so), as in ascend-device-plugin.
func (p *Plugin) GetPreferredAllocation(context.Context, *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	return nil, errors.New("not supported")
}

// PreStartContainer is never called (no PreStartRequired); it answers empty, as ascend-device-plugin does.
func (p *Plugin) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}

// Allocate answers each container request with what an Ascend node gives that container: the
// device plugin's env (ASCEND_VISIBLE_DEVICES, ASCEND_RUNTIME_OPTIONS) and what Ascend Docker
// Runtime adds from that env on a real node (the device nodes and the driver folder).
func (p *Plugin) Allocate(_ context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	resp := &pluginapi.AllocateResponse{}
	for _, creq := range req.GetContainerRequests() {
		c, err := p.allocateContainer(creq.GetDevicesIds())
		if err != nil {
			return nil, err
		}
		resp.ContainerResponses = append(resp.ContainerResponses, c)
	}
	return resp, nil
}

func (p *Plugin) allocateContainer(ids []string) (*pluginapi.ContainerAllocateResponse, error) {
	if len(ids) == 0 {
		return nil, errors.New("empty device ids in a container request")
	}
	prefix := p.cfg.DeviceType() + "-"
	phys := make([]int, 0, len(ids))
	seen := map[int]bool{}
	for _, id := range ids {
		n, err := strconv.Atoi(strings.TrimPrefix(id, prefix))
		if !strings.HasPrefix(id, prefix) || err != nil || n < 0 || n >= p.cfg.Count {
			return nil, fmt.Errorf("plugin doesn't have device %s (it has %s-0 .. %s-%d)", id, p.cfg.DeviceType(), p.cfg.DeviceType(), p.cfg.Count-1)
		}
		if !seen[n] {
			seen[n] = true
			phys = append(phys, n)
		}
	}
	sort.Ints(phys)
	visible := make([]string, len(phys))
	c := &pluginapi.ContainerAllocateResponse{Envs: map[string]string{RuntimeOptionsEnv: ""}}
	for i, n := range phys {
		visible[i] = strconv.Itoa(n)
		name := devicePrefix + visible[i]
		c.Devices = append(c.Devices, &pluginapi.DeviceSpec{
			HostPath: filepath.Join(p.cfg.DeviceDir, name), ContainerPath: "/dev/" + name, Permissions: "rw",
		})
	}
	c.Envs[VisibleDevicesEnv] = strings.Join(visible, ",")
	for _, name := range SharedDevices {
		c.Devices = append(c.Devices, &pluginapi.DeviceSpec{
			HostPath: filepath.Join(p.cfg.DeviceDir, name), ContainerPath: "/dev/" + name, Permissions: "rw",
		})
	}
	if p.cfg.DriverDir != "" {
		c.Mounts = append(c.Mounts, &pluginapi.Mount{
			HostPath: p.cfg.DriverDir, ContainerPath: DriverContainerPath, ReadOnly: true,
		})
	}
	return c, nil
}

// Server is one serving of the plugin on its socket, registered with one kubelet.
type Server struct {
	plugin *Plugin
	grpc   *grpc.Server
	socket string
}

// Serve listens on PluginDir/Endpoint (replacing a stale socket) and serves the plugin there.
func Serve(cfg Config) (*Server, error) {
	socket := filepath.Join(cfg.PluginDir, cfg.Endpoint())
	if err := os.Remove(socket); err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("removing the stale socket %s: %w", socket, err)
	}
	lis, err := net.Listen("unix", socket)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", socket, err)
	}
	s := &Server{plugin: NewPlugin(cfg), grpc: grpc.NewServer(), socket: socket}
	pluginapi.RegisterDevicePluginServer(s.grpc, s.plugin)
	go func() { _ = s.grpc.Serve(lis) }()
	return s, nil
}

// Stop ends the streams, stops serving and removes the socket.
func (s *Server) Stop() {
	s.plugin.Stop()
	s.grpc.Stop()
	_ = os.Remove(s.socket)
}

// Register announces the plugin to the kubelet through PluginDir/kubelet.sock.
func Register(ctx context.Context, cfg Config) error {
	kubelet := filepath.Join(cfg.PluginDir, filepath.Base(pluginapi.KubeletSocket))
	conn, err := grpc.NewClient("unix://"+kubelet, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("connecting to the kubelet at %s: %w", kubelet, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     cfg.Endpoint(),
		ResourceName: cfg.ResourceName,
		Options:      &pluginapi.DevicePluginOptions{},
	})
	if err != nil {
		return fmt.Errorf("registering %s with the kubelet at %s: %w", cfg.ResourceName, kubelet, err)
	}
	return nil
}
