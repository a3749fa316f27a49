"""The real control plane for the security suite: one per run of the package, stopped after its last
test (not kept to the end of a whole run).

`mnv2_cluster.Cluster` starts etcd, kube-apiserver (`--authorization-mode=Node,RBAC`), the controller
manager and the scheduler on loopback; its CA signs client certificates for test users and it issues
ServiceAccount tokens with TokenRequest, so every check here is made by the API server's own
authenticator and authorizer. The job CRD and Volcano's PodGroup CRD exist before the controller
manager starts. The suite needs identities made from the cluster's own CA, so it does not run against
a `--kubeconfig` cluster.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml
from mnv2_cluster.launcher import Cluster
from volcano import PODGROUP_CRD

from manifests import CHART_DIR


@pytest.fixture(scope="package")
def control_plane(
    kubeconfig_option: str | None, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Cluster]:
    if kubeconfig_option:
        pytest.skip("makes users and tokens with the local control plane's CA and its admin credentials")
    crds = [path.read_text() for path in sorted((CHART_DIR / "crds").glob("*.yaml"))]
    crds.append(yaml.safe_dump(PODGROUP_CRD))
    cluster = Cluster(tmp_path_factory.mktemp("control-plane"), crds=crds).start()
    report = request.config.pluginmanager.get_plugin("terminalreporter")
    if report is not None:
        report.write_line(f"\nlocal control plane ready in {cluster.timings['ready']:.1f} s")
    failed_before = request.session.testsfailed
    try:
        yield cluster
    finally:
        if report is not None and request.session.testsfailed > failed_before:
            report.write_line(f"\ncontrol plane logs (tests failed):\n{cluster.dump_logs()}")
        cluster.stop()
