package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// fakeKubelet is the kubelet's Registration service on <dir>/kubelet.sock, recording each request.
type fakeKubelet struct {
	pluginapi.UnimplementedRegistrationServer
	mu       sync.Mutex
	requests []*pluginapi.RegisterRequest
	got      chan *pluginapi.RegisterRequest
	srv      *grpc.Server
}

func startFakeKubelet(t *testing.T, dir string) *fakeKubelet {
	t.Helper()
	lis, err := net.Listen("unix", filepath.Join(dir, "kubelet.sock"))
	if err != nil {
		t.Fatal(err)
	}
	k := &fakeKubelet{got: make(chan *pluginapi.RegisterRequest, 10), srv: grpc.NewServer()}
	pluginapi.RegisterRegistrationServer(k.srv, k)
	go func() { _ = k.srv.Serve(lis) }()
	t.Cleanup(k.srv.Stop)
	return k
}

func (k *fakeKubelet) Register(_ context.Context, req *pluginapi.RegisterRequest) (*pluginapi.Empty, error) {
	k.mu.Lock()
	k.requests = append(k.requests, req)
	k.mu.Unlock()
	k.got <- req
	return &pluginapi.Empty{}, nil
}

func (k *fakeKubelet) waitRegister(t *testing.T) *pluginapi.RegisterRequest {
	t.Helper()
	select {
	case req := <-k.got:
		return req
	case <-time.After(15 * time.Second):
		t.Fatal("the plugin did not register with the kubelet within 15 s")
		return nil
	}
}

// dialPlugin connects to the plugin as the kubelet does: <plugin dir>/<endpoint of the RegisterRequest>.
func dialPlugin(t *testing.T, dir, endpoint string) pluginapi.DevicePluginClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, endpoint), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pluginapi.NewDevicePluginClient(conn)
}

// startRun runs the plugin's main loop against dir until the test ends.
func startRun(t *testing.T, cfg Config) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, 50*time.Millisecond, t.Logf) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func testConfig(t *testing.T) Config {
	// Short folder names: a unix socket's path is limited to 107 bytes.
	dir, err := os.MkdirTemp("", "adp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return Config{
		ResourceName: "huawei.com/Ascend910", Count: 4, PluginDir: dir,
		DeviceDir: "/node/dev", DriverDir: "/node/driver",
	}
}

func TestRegisterListAndWatchAllocate(t *testing.T) {
	cfg := testConfig(t)
	kubelet := startFakeKubelet(t, cfg.PluginDir)
	startRun(t, cfg)

	req := kubelet.waitRegister(t)
	if req.Version != "v1beta1" || req.ResourceName != "huawei.com/Ascend910" || req.Endpoint != "Ascend910.sock" {
		t.Fatalf("RegisterRequest = %v; want version v1beta1, resource huawei.com/Ascend910, endpoint Ascend910.sock", req)
	}
	if req.Options.GetPreStartRequired() || req.Options.GetGetPreferredAllocationAvailable() {
		t.Fatalf("RegisterRequest options = %v; ascend-device-plugin asks for neither PreStartContainer nor GetPreferredAllocation", req.Options)
	}
	client := dialPlugin(t, cfg.PluginDir, req.Endpoint)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()

	opts, err := client.GetDevicePluginOptions(ctx, &pluginapi.Empty{})
	if err != nil || opts.PreStartRequired || opts.GetPreferredAllocationAvailable {
		t.Fatalf("GetDevicePluginOptions = %v, %v; want empty options", opts, err)
	}

	stream, err := client.ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	list, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, d := range list.Devices {
		if d.Health != pluginapi.Healthy {
			t.Errorf("device %s health %q; want Healthy", d.ID, d.Health)
		}
		ids = append(ids, d.ID)
	}
	if want := []string{"Ascend910-0", "Ascend910-1", "Ascend910-2", "Ascend910-3"}; !reflect.DeepEqual(ids, want) {
		t.Fatalf("ListAndWatch devices = %v; want %v", ids, want)
	}

	// The kubelet asks for two devices for one container, in any order.
	resp, err := client.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{
		{DevicesIds: []string{"Ascend910-3", "Ascend910-1"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.ContainerResponses) != 1 {
		t.Fatalf("Allocate answered %d containers; want 1", len(resp.ContainerResponses))
	}
	c := resp.ContainerResponses[0]
	if want := map[string]string{"ASCEND_VISIBLE_DEVICES": "1,3", "ASCEND_RUNTIME_OPTIONS": ""}; !reflect.DeepEqual(c.Envs, want) {
		t.Errorf("Allocate envs = %v; want %v", c.Envs, want)
	}
	var devices []string
	for _, d := range c.Devices {
		devices = append(devices, d.HostPath+":"+d.ContainerPath+":"+d.Permissions)
	}
	wantDevices := []string{
		"/node/dev/davinci1:/dev/davinci1:rw", "/node/dev/davinci3:/dev/davinci3:rw",
		"/node/dev/davinci_manager:/dev/davinci_manager:rw", "/node/dev/devmm_svm:/dev/devmm_svm:rw",
		"/node/dev/hisi_hdc:/dev/hisi_hdc:rw",
	}
	if !reflect.DeepEqual(devices, wantDevices) {
		t.Errorf("Allocate devices = %v; want %v", devices, wantDevices)
	}
	if len(c.Mounts) != 1 || c.Mounts[0].HostPath != "/node/driver" ||
		c.Mounts[0].ContainerPath != "/usr/local/Ascend/driver" || !c.Mounts[0].ReadOnly {
		t.Errorf("Allocate mounts = %v; want /node/driver read-only at /usr/local/Ascend/driver", c.Mounts)
	}

	_, err = client.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{
		{DevicesIds: []string{"Ascend910-4"}},
	}})
	if err == nil || !strings.Contains(err.Error(), "plugin doesn't have device Ascend910-4") {
		t.Errorf("Allocate of an unknown device: err = %v; want \"plugin doesn't have device Ascend910-4\"", err)
	}

	pre, err := client.PreStartContainer(ctx, &pluginapi.PreStartContainerRequest{DevicesIds: []string{"Ascend910-0"}})
	if err != nil || pre == nil {
		t.Errorf("PreStartContainer = %v, %v; want an empty answer", pre, err)
	}
}

func TestAllocateWithoutDriverDir(t *testing.T) {
	p := NewPlugin(Config{ResourceName: "huawei.com/Ascend910", Count: 1, DeviceDir: "/d"})
	resp, err := p.Allocate(context.Background(), &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{
		{DevicesIds: []string{"Ascend910-0"}}, {DevicesIds: []string{"Ascend910-0"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range resp.ContainerResponses {
		if len(c.Mounts) != 0 || c.Envs["ASCEND_VISIBLE_DEVICES"] != "0" || len(c.Devices) != 4 {
			t.Errorf("container answer %v; want ASCEND_VISIBLE_DEVICES=0, 4 devices, no mounts", c)
		}
	}
	for _, ids := range [][]string{{}, {"Ascend310-0"}, {"Ascend910-x"}, {"Ascend910--1"}} {
		if _, err := p.Allocate(context.Background(), &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: ids}}}); err == nil {
			t.Errorf("Allocate(%q) succeeded; want an error", ids)
		}
	}
}

// A restarting kubelet removes every socket in its folder and makes a new kubelet.sock; the plugin
// must serve and register again, or its resource drops to zero on the node.
func TestRegistersAgainWhenTheKubeletRestarts(t *testing.T) {
	cfg := testConfig(t)
	first := startFakeKubelet(t, cfg.PluginDir)
	startRun(t, cfg)
	first.waitRegister(t)

	first.srv.Stop()
	entries, _ := os.ReadDir(cfg.PluginDir)
	for _, e := range entries {
		os.Remove(filepath.Join(cfg.PluginDir, e.Name()))
	}
	second := startFakeKubelet(t, cfg.PluginDir)
	req := second.waitRegister(t)
	client := dialPlugin(t, cfg.PluginDir, req.Endpoint)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	stream, err := client.ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if list, err := stream.Recv(); err != nil || len(list.Devices) != 4 {
		t.Fatalf("ListAndWatch after the kubelet's restart = %v, %v; want 4 devices", list, err)
	}
}

func TestRunWaitsForTheKubelet(t *testing.T) {
	cfg := testConfig(t)
	startRun(t, cfg)
	time.Sleep(200 * time.Millisecond) // the plugin starts first, as it may on a booting node
	startFakeKubelet(t, cfg.PluginDir).waitRegister(t)
}

func TestMakeDeviceNodes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("making device nodes needs root (CAP_MKNOD); run `go test` as root to check them")
	}
	dir := filepath.Join(t.TempDir(), "dev")
	paths, err := MakeDeviceNodes(dir, 2, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range paths {
		names = append(names, filepath.Base(p))
	}
	if want := []string{"davinci0", "davinci1", "davinci_manager", "devmm_svm", "hisi_hdc"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("made %v; want %v", names, want)
	}
	var null unix.Stat_t
	if err := unix.Stat("/dev/null", &null); err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Mode&0o7777 != 0o660 || st.Uid != 0 || st.Gid != 1000 || st.Rdev != null.Rdev {
			t.Errorf("%s: mode %o uid %d gid %d rdev %d; want a character device 0660 0:1000 with /dev/null's rdev %d",
				p, st.Mode, st.Uid, st.Gid, st.Rdev, null.Rdev)
		}
	}
	// Made again over existing nodes (a restarted plugin).
	if _, err := MakeDeviceNodes(dir, 2, 0, 1001); err != nil {
		t.Fatal(err)
	}
	if _, err := MakeDeviceNodes("/dev", 1, 0, 1000); err == nil {
		t.Error("MakeDeviceNodes(/dev) succeeded; it must refuse the host's /dev")
	}
}

func TestValidate(t *testing.T) {
	good := Config{ResourceName: "huawei.com/Ascend910", Count: 1, PluginDir: "/p", DeviceDir: "/d"}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for flag, bad := range map[string]Config{
		"--resource":   {ResourceName: "Ascend910", Count: 1, PluginDir: "/p", DeviceDir: "/d"},
		"--count":      {ResourceName: "huawei.com/Ascend910", PluginDir: "/p", DeviceDir: "/d"},
		"--plugin-dir": {ResourceName: "huawei.com/Ascend910", Count: 1, DeviceDir: "/d"},
		"--device-dir": {ResourceName: "huawei.com/Ascend910", Count: 1, PluginDir: "/p"},
	} {
		if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), flag) {
			t.Errorf("Validate(%+v) = %v; want an error naming %s", bad, err, flag)
		}
	}
}
