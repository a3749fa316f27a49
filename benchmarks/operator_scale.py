"""Operator at scale: N jobs applied at once to the real control plane (simulated pods), 100 / 500 / 1000 jobs.

    .venv/bin/python benchmarks/operator_scale.py [--jobs 100,500,1000] [--pod-seconds 5] [--smoke] [--profile]

For each N: a fresh local control plane (``mnv2_cluster.launcher.Cluster``: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler built from upstream) with the CRD and one simulated node
sized for N pods (``mnv2_cluster.simulated.SimulatedNode``, in this process), the operator as its own process
(``mnv2 operator --standalone``, cluster-wide, like the chart's Deployment, as a user of its own so
the audit log tells its requests apart), then N one-node CPU jobs created concurrently through the API
(16 client threads). The real scheduler binds each pod; the simulated node marks it Running at once and
ends it with exit code 0 ``--pod-seconds`` later. Measured:

* time until every job has its pod, and the per-job latency (creation -> pod seen; 1 s polling);
* time until every job's pod is Running (bound by the scheduler, started by the node): pods ready;
* time until every job's ``status.phase`` is ``Succeeded``;
* API requests per job made by the operator (the API server's audit log, the operator's user only),
  by verb and resource;
* duplicate creates: creates that got 409 Conflict (the object existed: created twice), those of
  pods, and merge patches of children (none expected without gang restarts: a second reconcile
  racing the first shows up here);
* the operator's peak RSS (``VmHWM``) and CPU seconds, the control plane's CPU seconds (its four
  processes) and this process's (simulated node and polling), so the time can be attributed.

``--profile`` runs the operator under cProfile and prints its top functions (cumulative time).
Goal: 1000 jobs all with pods within 60 s, operator under 200 MB.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
from mnv2_operator.constants import GROUP, KIND, LABEL_JOB, PLURAL, VERSION  # noqa: E402

NAMESPACE = "default"
OPERATOR_USER = "mnv2-operator-bench"
GOAL_SECONDS, GOAL_MB = 60.0, 200.0
POLL_SECONDS = 1.0


def job_body(name: str) -> dict[str, Any]:
    """A small valid job: one CPU node, synthetic data (the pods are simulated anyway)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {"name": "mobilenet_v2_075"},
            "dataset": {"type": "synthetic"},
            "output": {"pvc": {"claimName": "mnv2-runs", "subPath": name}},
            "accelerator": {"type": "cpu"},
            "nodes": 1,
            "devicesPerNode": 1,
        },
    }


# --------------------------------------------------------------------------- /proc readings
def proc_status(pid: int) -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) in MB and CPU seconds of a process; empty if it is gone."""
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out["cpu"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        pass
    return out


# --------------------------------------------------------------------------- pure summaries
def request_breakdown(records: list[Any], jobs: int) -> tuple[int, dict[str, int]]:
    """Operator requests (total, by ``verb resource[/sub] (error code)``) from audit records, minus the
    job creations of this script."""
    counts: collections.Counter[str] = collections.Counter()
    for r in records:
        if r.verb == "create" and r.resource == PLURAL and not r.subresource:
            continue  # this script's own job creations
        failed = f" ({r.code})" if r.code >= 400 else ""
        counts[f"{r.verb} {r.resource}{'/' + r.subresource if r.subresource else ''}{failed}"] += 1
    return sum(counts.values()), dict(counts.most_common())


def duplicate_creates(records: list[Any]) -> dict[str, int]:
    """Creates answered 409 Conflict (the object existed: a second create), and child patches.

    Returns ``conflicts`` (409 creates of anything but Events), ``pod_conflicts`` (of pods: in this
    benchmark a job has one pod, so that is about the number of jobs that had a duplicate create)
    and ``child_patches`` (merge patches of anything but the job's status: the old operator patched
    every child after a 409). The audit does not name the object of a create, so no per-job split.
    """
    conflicts = pod_conflicts = child_patches = 0
    for r in records:
        if r.verb == "patch" and r.resource != PLURAL:
            child_patches += 1
        if r.verb == "create" and r.code == 409 and r.resource != "events":
            conflicts += 1
            pod_conflicts += r.resource == "pods"
    return {"conflicts": conflicts, "pod_conflicts": pod_conflicts, "child_patches": child_patches}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    vals = sorted(values)
    return vals[min(len(vals) - 1, max(0, round(q * (len(vals) - 1))))]


# --------------------------------------------------------------------------- one scale point
@dataclass(frozen=True)
class Record:
    """One request of the operator, from the API server's audit log."""

    verb: str
    resource: str
    subresource: str
    code: int


def operator_records(cluster: Any) -> list[Record]:
    """The operator's requests for objects so far, in order (a watch when it starts, others when done)."""
    out = []
    for e in cluster.audit_events():
        if (e.get("user") or {}).get("username") != OPERATOR_USER:
            continue
        if e.get("stage") != ("ResponseStarted" if e.get("verb") == "watch" else "ResponseComplete"):
            continue
        ref = e.get("objectRef")
        if ref is None:  # discovery, /version
            continue
        code = int((e.get("responseStatus") or {}).get("code", 0))
        out.append(Record(e["verb"], ref.get("resource", ""), ref.get("subresource", ""), code))
    return out


def wait_operator_ready(cluster: Any, proc: subprocess.Popen[bytes], timeout: float = 120) -> float:
    """Seconds until the operator watches jobs and pods (seen in the audit log)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        watched = {r.resource for r in operator_records(cluster) if r.verb == "watch"}
        if {PLURAL, "pods"} <= watched:
            return time.monotonic() - t0
        if proc.poll() is not None:
            raise RuntimeError(f"the operator exited with {proc.returncode} before watching")
        time.sleep(0.5)
    raise RuntimeError(f"the operator did not start watching within {timeout}s")


def create_jobs(client: Any, names: list[str], threads: int = 16) -> dict[str, float]:
    """Create the jobs concurrently; returns each job's creation time (monotonic)."""
    import kubernetes

    client.configuration.connection_pool_maxsize = threads
    client.rest_client = kubernetes.client.rest.RESTClientObject(client.configuration)
    custom = kubernetes.client.CustomObjectsApi(client)
    created: dict[str, float] = {}

    def create(name: str) -> None:
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, job_body(name))
        created[name] = time.monotonic()

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, names))
    return created


def run_point(
    n: int, pod_seconds: float, timeout: float, profile: Path | None, log_dir: Path
) -> dict[str, Any]:
    import kubernetes
    from mnv2_cluster.launcher import Cluster
    from mnv2_cluster.simulated import SimulatedNode
    from mnv2_operator import crd

    with tempfile.TemporaryDirectory(prefix=f"mnv2-bench-op{n}-") as tmp:
        # The CRD exists before the controller manager starts, so garbage collection knows its kind.
        cluster = Cluster(Path(tmp) / "cluster", crds=[crd.crd_yaml()])
        node = None
        proc = None
        try:
            cluster.start()
            # Sized for every job's pod (a kubelet's default is 110 pods).
            node = SimulatedNode.for_cluster(
                cluster,
                "sim-0",
                capacity={"cpu": str(4 * n), "memory": f"{16 * n}Gi", "pods": str(n + 10)},
            )
            node.default_outcome = (pod_seconds, 0)
            node.start()
            cluster.create_local_claim(NAMESPACE, "mnv2-runs")
            client = cluster.api_client()
            core = kubernetes.client.CoreV1Api(client)
            custom = kubernetes.client.CustomObjectsApi(client)
            kubeconfig = cluster.kubeconfig_for_user(OPERATOR_USER, ["system:masters"])
            env = dict(os.environ, KUBECONFIG=str(kubeconfig))
            cmd = [sys.executable]
            if profile is not None:
                cmd += ["-m", "cProfile", "-o", str(profile)]
            cmd += ["-m", "mnv2_operator.cli", "operator", "--standalone", "--liveness", ""]
            log = open(log_dir / f"operator-{n}.log", "w")  # noqa: SIM115
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            ready_s = wait_operator_ready(cluster, proc)
            time.sleep(1.0)  # let the initial lists settle
            audit_start = len(operator_records(cluster))
            op_cpu0 = proc_status(proc.pid).get("cpu", 0.0)
            cp_pids = [c.proc.pid for c in cluster.components.values() if c.proc is not None]
            cp_cpu0 = sum(proc_status(pid).get("cpu", 0.0) for pid in cp_pids)
            own_cpu0 = common.cpu_seconds()
            names = [f"bench-{i:05d}" for i in range(n)]
            load_start = common.load_average()
            t0 = time.monotonic()
            created = create_jobs(client, names)
            t_created = time.monotonic() - t0
            pod_seen: dict[str, float] = {}
            pod_running: set[str] = set()
            t_all_pods = t_all_running = t_all_done = float("nan")
            peak_rss = 0.0
            while time.monotonic() - t0 < timeout:
                now = time.monotonic()
                for pod in core.list_namespaced_pod(NAMESPACE, label_selector=LABEL_JOB).items:
                    job = pod.metadata.labels[LABEL_JOB]
                    pod_seen.setdefault(job, now)
                    if pod.status.phase in ("Running", "Succeeded"):
                        pod_running.add(job)
                if len(pod_seen) >= n and t_all_pods != t_all_pods:
                    t_all_pods = now - t0
                if len(pod_running) >= n and t_all_running != t_all_running:
                    t_all_running = now - t0
                jobs = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)["items"]
                done = sum(1 for j in jobs if (j.get("status") or {}).get("phase") == "Succeeded")
                peak_rss = max(peak_rss, proc_status(proc.pid).get("VmRSS", 0.0))
                if done >= n:
                    t_all_done = now - t0
                    break
                if proc.poll() is not None:
                    raise RuntimeError(f"the operator exited with {proc.returncode}; see {log.name}")
                time.sleep(POLL_SECONDS)
            st = proc_status(proc.pid)
            op_cpu = st.get("cpu", 0.0) - op_cpu0
            cp_cpu = sum(proc_status(pid).get("cpu", 0.0) for pid in cp_pids) - cp_cpu0
            own_cpu = common.cpu_seconds() - own_cpu0
            records = operator_records(cluster)[audit_start:]
            total, breakdown = request_breakdown(records, n)
            dups = duplicate_creates(records)
            latencies = [pod_seen[j] - created[j] for j in pod_seen if j in created]
            return {
                "jobs": n,
                "control_plane_ready_s": cluster.timings["ready"],
                "operator_ready_s": ready_s,
                "create_s": t_created,
                "all_pods_s": t_all_pods,
                "all_pods_running_s": t_all_running,
                "pod_latency_p50": percentile(latencies, 0.5),
                "pod_latency_p90": percentile(latencies, 0.9),
                "jobs_with_pods": len(pod_seen),
                "jobs_with_running_pods": len(pod_running),
                "all_succeeded_s": t_all_done,
                "requests": total,
                "requests_per_job": total / n,
                "breakdown": breakdown,
                "job_gets_per_job": breakdown.get(f"get {PLURAL}", 0) / n,
                "conflict_creates": dups["conflicts"],
                "pod_conflict_creates": dups["pod_conflicts"],
                "child_patches": dups["child_patches"],
                "operator_peak_rss_mb": max(st.get("VmHWM", 0.0), peak_rss),
                "operator_cpu_s": op_cpu,
                "control_plane_cpu_s": cp_cpu,
                "node_and_client_cpu_s": own_cpu,
                "load_start": load_start,
                "load": common.load_average(),
            }
        finally:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT if profile is not None else signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if node is not None:
                node.stop()
            cluster.stop()


def print_profile(path: Path, top: int = 25) -> None:
    if not path.exists():
        print(f"(no profile written at {path})")
        return
    stats = pstats.Stats(str(path))
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", default="100,500,1000", help="comma-separated job counts")
    p.add_argument("--pod-seconds", type=float, default=5.0, help="simulated pod run time")
    p.add_argument("--timeout", type=float, default=900.0, help="per scale point")
    p.add_argument("--profile", action="store_true", help="run the operator under cProfile (slower)")
    p.add_argument("--smoke", action="store_true", help="10 jobs, pods of 1 s")
    p.add_argument("--json")
    args = p.parse_args(argv)
    if args.smoke:
        args.jobs, args.pod_seconds = "10", 1.0
    counts = [int(x) for x in args.jobs.split(",") if x.strip()]
    print(
        common.machine_header(
            f"operator_scale: {args.jobs} jobs at once, simulated pods of {args.pod_seconds:g} s",
            ["kopf", "kubernetes", "aiohttp"],
        )
    )
    log_dir = common.default_log_dir("operator_scale")
    log_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for n in counts:
        prof = log_dir / f"operator-{n}.prof" if args.profile else None
        print(f"[{n} jobs] ...", file=sys.stderr, flush=True)
        res = run_point(n, args.pod_seconds, args.timeout, prof, log_dir)
        results.append(res)
        print(f"[{n} jobs] {json.dumps({k: v for k, v in res.items() if k != 'breakdown'})}", file=sys.stderr)
        if prof is not None:
            print(f"\n## operator profile, {n} jobs")
            print_profile(prof)
    rows = [
        [
            r["jobs"],
            r["create_s"],
            r["all_pods_s"],
            r["all_pods_running_s"],
            r["pod_latency_p50"],
            r["pod_latency_p90"],
            r["all_succeeded_s"],
            r["requests_per_job"],
            r["job_gets_per_job"],
            r["conflict_creates"],
            r["pod_conflict_creates"],
            r["child_patches"],
            r["operator_peak_rss_mb"],
            r["operator_cpu_s"],
            r["control_plane_cpu_s"],
            r["node_and_client_cpu_s"],
        ]
        for r in results
    ]
    print(
        common.format_table(
            [
                "jobs",
                "create s",
                "all pods s",
                "all pods Running s",
                "pod p50 s",
                "pod p90 s",
                "all Succeeded s",
                "requests/job",
                "job GETs/job",
                "409 creates",
                "409 pod creates",
                "child patches",
                "operator peak MB",
                "operator CPU s",
                "control plane CPU s",
                "node+client CPU s",
            ],
            rows,
        )
    )
    for r in results:
        per_job = {k: round(v / r["jobs"], 2) for k, v in r["breakdown"].items()}
        print(f"\nrequests per job at {r['jobs']} jobs: {per_job}")
    big = max(results, key=lambda r: r["jobs"]) if results else None
    if big is not None:
        ok_t = big["all_pods_s"] == big["all_pods_s"] and big["all_pods_s"] <= GOAL_SECONDS
        ok_m = big["operator_peak_rss_mb"] <= GOAL_MB
        print(
            f"\ngoal ({big['jobs']} jobs): all pods within {GOAL_SECONDS:.0f} s: {'met' if ok_t else 'NOT met'} "
            f"({common.fmt(big['all_pods_s'])} s); operator under {GOAL_MB:.0f} MB: {'met' if ok_m else 'NOT met'} "
            f"({common.fmt(big['operator_peak_rss_mb'])} MB)"
        )
    for r in results:
        print(f"load average at {r['jobs']} jobs: {r['load_start']} before, {r['load']} after")
    print(f"load average at end: {common.load_average()}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
