"""The pure parts of the Ascend device-plugin launcher: its command line, the driver folder stand-in."""

from __future__ import annotations

from pathlib import Path

from mnv2_cluster import ascend


def test_device_plugin_command(tmp_path: Path) -> None:
    cmd = ascend.device_plugin_command(
        Path("/bin/adp"), tmp_path / "dp", tmp_path / "dev", count=2, driver_dir=tmp_path / "drv"
    )
    assert cmd == [
        "/bin/adp",
        "--resource=huawei.com/Ascend910",
        "--count=2",
        f"--plugin-dir={tmp_path / 'dp'}",
        f"--device-dir={tmp_path / 'dev'}",
        "--device-gid=1000",
        f"--driver-dir={tmp_path / 'drv'}",
    ]
    assert not any(
        a.startswith("--driver-dir") for a in ascend.device_plugin_command(Path("b"), tmp_path, tmp_path)
    )
    owned = ascend.device_plugin_command(Path("b"), tmp_path, tmp_path, uid=ascend.HWHIAIUSER_UID)
    assert "--device-uid=1000" in owned


def test_driver_dir_stand_in(tmp_path: Path) -> None:
    driver = ascend.make_driver_dir(tmp_path / "driver", version="24.1.0")
    assert (driver / "version.info").read_text() == "Version=24.1.0\n" and (driver / "lib64").is_dir()


def test_node_root_mounts_make_the_driver_and_install_info_in_the_nodes_folder(tmp_path: Path) -> None:
    driver, commands = ascend.node_root_mounts(tmp_path)
    assert driver == tmp_path / "driver" and (driver / "version.info").is_file()
    assert (tmp_path / "usr-local-upper" / "Ascend" / "driver").is_dir()
    info = (tmp_path / "etc-upper" / "ascend_install.info").read_text()
    assert "UserGroup=HwHiAiUser\n" in info and "Driver_Install_Status=complete\n" in info
    # Overlays first (they give the paths a place), then the driver folder on its path.
    assert [c.split()[-1] for c in commands] == ["'/usr/local'", "'/etc'", f"'{ascend.DRIVER_NODE_PATH}'"]
    assert commands[-1] == f"mount --bind '{driver}' '/usr/local/Ascend/driver'"
