"""The control plane's build cache key, binary lookup and PKI (no Go build, no processes)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from mnv2_cluster import build
from mnv2_cluster.pki import PKI

MODULE = Path(build.__file__).resolve().parents[1]


def copy_module(tmp_path: Path) -> Path:
    dest = tmp_path / "cluster"
    dest.mkdir()
    for name in ("go.mod", "go.sum"):
        shutil.copy(MODULE / name, dest / name)
    shutil.copytree(MODULE / "cmd", dest / "cmd")
    return dest


def test_cache_key_follows_the_pins_and_the_sources(tmp_path: Path) -> None:
    module = copy_module(tmp_path)
    key = build.cache_key(module)
    assert key == build.cache_key(MODULE) and len(key) == 16
    (module / "go.sum").write_text((module / "go.sum").read_text() + "example.com/x v1.0.0 h1:abc=\n")
    changed_sum = build.cache_key(module)
    main = next((module / "cmd").rglob("main.go"))
    main.write_text(main.read_text() + "\n// changed\n")
    assert len({key, changed_sum, build.cache_key(module)}) == 3


def test_cache_key_without_the_go_module_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(build.BuildError, match="go.mod missing.*MNV2_CLUSTER_BIN"):
        build.cache_key(tmp_path)


def test_binaries_missing_names_the_build_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNV2_CLUSTER_BIN", str(tmp_path))
    with pytest.raises(build.BuildError, match=rf"{', '.join(build.BINARIES)} not found in .*`make cluster`"):
        build.binaries()
    for name in build.BINARIES:
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    assert build.binaries() == {name: tmp_path / name for name in build.BINARIES}


def test_cache_folder_is_keyed_under_xdg_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MNV2_CLUSTER_BIN", raising=False)
    monkeypatch.delenv("MNV2_CLUSTER_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert build.bin_dir() == tmp_path / "mnv2-operator" / "cluster" / build.cache_key()


def test_print_dir_does_not_build() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mnv2_cluster.build", "--print-dir"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == str(build.bin_dir()) and not out.stderr


def test_pki_client_and_serving_certificates(tmp_path: Path) -> None:
    pki = PKI(tmp_path / "pki")
    ca = x509.load_pem_x509_certificate(pki.ca.cert_pem())
    client = x509.load_pem_x509_certificate(pki.client("node", "system:node:n1", ["system:nodes"]).cert_pem())
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:n1"
    assert [a.value for a in client.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == [
        "system:nodes"
    ]
    usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    client.verify_directly_issued_by(ca)
    serving = x509.load_pem_x509_certificate(
        pki.serving("api", ["127.0.0.1", "kubernetes.default"]).cert_pem()
    )
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["kubernetes.default"]
    serving.verify_directly_issued_by(ca)
    assert (tmp_path / "pki" / "api.key").stat().st_mode & 0o077 == 0
    # a second PKI on the same folder reuses the CA and the service-account key
    again = PKI(tmp_path / "pki")
    assert again.ca.cert_pem() == pki.ca.cert_pem() and again.sa_key.read_bytes() == pki.sa_key.read_bytes()


def test_audit_events_read_rotated_files_first(tmp_path: Path) -> None:
    from mnv2_cluster.launcher import Cluster

    cluster = Cluster(tmp_path)
    (tmp_path / "audit-2026-11-30T04-19-11.123.log").write_text('{"n": 1}\n{"n": 2}\n')
    (tmp_path / "audit-2026-11-30T05-00-00.000.log").write_text('{"n": 3}\n')
    (tmp_path / "audit.log").write_text('{"n": 4}\n\n')
    assert [e["n"] for e in cluster.audit_events()] == [1, 2, 3, 4]
