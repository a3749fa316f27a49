package main

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// NodeNames are the device nodes of a node with count NPUs: davinci0 .. davinci<count-1> and the
// shared ones.
func NodeNames(count int) []string {
	names := make([]string, 0, count+len(SharedDevices))
	for i := 0; i < count; i++ {
		names = append(names, fmt.Sprintf("%s%d", devicePrefix, i))
	}
	return append(names, SharedDevices...)
}

// MakeDeviceNodes creates the node's device nodes in dir as the NPU driver leaves them, owner uid,
// group gid, mode 0660 (crw-rw----), but as character devices with /dev/null's major and minor
// numbers: a container that may open them reads and writes nothing, and the kubelet's device cgroup
// rules and the runtime's device handling work on them as on real NPU nodes. Existing nodes of these
// names are replaced.
func MakeDeviceNodes(dir string, count, uid, gid int) ([]string, error) {
	if abs, err := filepath.Abs(dir); err == nil && abs == "/dev" {
		return nil, fmt.Errorf("--device-dir %s: stand-in device nodes are made in a folder of their own, never in /dev", dir)
	}
	var null unix.Stat_t
	if err := unix.Stat("/dev/null", &null); err != nil {
		return nil, fmt.Errorf("reading /dev/null's device numbers: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var paths []string
	for _, name := range NodeNames(count) {
		path := filepath.Join(dir, name)
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			return nil, fmt.Errorf("replacing %s: %w", path, err)
		}
		if err := unix.Mknod(path, unix.S_IFCHR|0o660, int(null.Rdev)); err != nil {
			if err == syscall.EPERM {
				return nil, fmt.Errorf("mknod %s: %w (making device nodes needs root, CAP_MKNOD)", path, err)
			}
			return nil, fmt.Errorf("mknod %s: %w", path, err)
		}
		if err := os.Chown(path, uid, gid); err != nil {
			return nil, fmt.Errorf("chown %s to %d:%d: %w", path, uid, gid, err)
		}
		if err := os.Chmod(path, 0o660); err != nil { // mknod's mode is masked by the umask
			return nil, fmt.Errorf("chmod %s: %w", path, err)
		}
		paths = append(paths, path)
	}
	return paths, nil
}
