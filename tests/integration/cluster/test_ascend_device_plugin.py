"""The Ascend device-plugin stand-in (cluster/cmd/ascend-device-plugin): its Go tests (a fake kubelet
checks Register, ListAndWatch and Allocate over the real gRPC API) and the built binary as the
launcher (`mnv2_cluster.ascend`) starts it for a node."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from mnv2_cluster import ascend, build
from support.cluster import wait_for


def test_go_tests_of_the_device_plugin() -> None:
    go = build.find_go()
    proc = subprocess.run(
        # -trimpath as in mnv2_cluster.build: the dependencies compiled for the control plane are reused.
        ["nice", "-n", "10", go, "test", "-trimpath", "-count=1", "./cmd/ascend-device-plugin/"],
        cwd=build.module_dir(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_launcher_makes_the_device_nodes_and_waits_for_the_kubelet(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("the device-plugin stand-in makes device nodes (mknod): run the tests as root")
    plugin_dir, device_dir, log = tmp_path / "dp", tmp_path / "dev", tmp_path / "adp.log"
    driver = ascend.make_driver_dir(tmp_path / "driver")
    proc = ascend.start_device_plugin(plugin_dir, device_dir, log=log, count=2, driver_dir=driver)
    try:
        wait_for(
            "the plugin waiting for kubelet.sock",
            lambda: "waiting for the kubelet's socket" in log.read_text(),
        )
        names = sorted(p.name for p in device_dir.iterdir())
        assert names == ["davinci0", "davinci1", "davinci_manager", "devmm_svm", "hisi_hdc"]
        for path in device_dir.iterdir():
            st = path.stat()
            assert stat.S_ISCHR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660, path
            assert (st.st_uid, st.st_gid) == (0, ascend.HWHIAIUSER_GID), path
            assert st.st_rdev == os.stat("/dev/null").st_rdev, path
    finally:
        code = ascend.stop_device_plugin(proc)
    assert code == 0, log.read_text()
    assert not (plugin_dir / "Ascend910.sock").exists()
