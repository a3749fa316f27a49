"""The `mnv2` command: `mnv2 operator | demo | render | crd | status | plot | cluster`.

Each subcommand parses its flags here and hands over to the module that owns the work, imported
lazily so that `mnv2 crd` does not pay for kopf or the cluster launcher. `demo` and `plot` live in
the demo package (`mnv2_demo`, the `demo` extra) and `cluster` in `mnv2_cluster` (the `cluster` extra):
without them these subcommands say which extra to install.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_operator(args: argparse.Namespace) -> int:
    from mnv2_operator import handlers

    return handlers.run_operator(
        namespaces=args.namespace,
        liveness=args.liveness,
        standalone=args.standalone,
    )


def _missing_extra(command: str, extra: str, error: ImportError) -> int:
    print(
        f"mnv2 {command} needs the {extra} extra (pip install 'mnv2-operator[{extra}]'): {error}",
        file=sys.stderr,
    )
    return 2


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        from mnv2_demo import demo
    except ImportError as e:
        return _missing_extra("demo", "demo", e)
    return demo.run_demo(args)


def _cmd_render(args: argparse.Namespace) -> int:
    from mnv2_operator import render

    return render.render_cli(args.filename, output=args.output)


def _cmd_crd(args: argparse.Namespace) -> int:
    from mnv2_operator import crd

    return crd.crd_cli()


def _cmd_status(args: argparse.Namespace) -> int:
    from mnv2_operator import show

    return show.status_cli(args.job, namespace=args.namespace, kubeconfig=args.kubeconfig)


def _cmd_plot(args: argparse.Namespace) -> int:
    try:
        from mnv2_demo import plot
    except ImportError as e:
        return _missing_extra("plot", "demo", e)
    return plot.plot_cli(
        args.source, output=args.output, namespace=args.namespace, kubeconfig=args.kubeconfig
    )


def _cmd_cluster(args: argparse.Namespace) -> int:
    try:
        from mnv2_cluster import cli as cluster_cli
    except ImportError as e:
        return _missing_extra("cluster", "cluster", e)
    return cluster_cli.run(args)


#: What ``ArgumentParser.add_subparsers`` returns.
_Subparsers = argparse._SubParsersAction


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mnv2", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_operator_parser,
        _add_demo_parser,
        _add_render_parser,
        _add_crd_parser,
        _add_status_parser,
        _add_plot_parser,
        _add_cluster_parser,
    ):
        add(sub)
    return parser


def _add_operator_parser(sub: _Subparsers) -> None:
    p = sub.add_parser("operator", help="run the operator (kopf) against the configured cluster")
    p.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: cluster-wide",
    )
    p.add_argument(
        "--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint URL served by kopf"
    )
    p.add_argument("--standalone", action="store_true", help="no peering with other operator replicas")
    p.set_defaults(run=_cmd_operator)


def _add_demo_parser(sub: _Subparsers) -> None:
    p = sub.add_parser(
        "demo", help="train MobileNetV2 on digits through the operator on a local Kubernetes control plane"
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the cluster running afterwards and print its kubeconfig"
    )
    p.add_argument(
        "--state-dir", default=".demo", help="where the cluster keeps etcd's data, volumes, logs, kubeconfig"
    )
    p.add_argument("-f", "--filename", default=None, help="job manifest (default: the digits CPU example)")
    p.set_defaults(run=_cmd_demo)


def _add_render_parser(sub: _Subparsers) -> None:
    p = sub.add_parser(
        "render",
        help="print the Kubernetes objects a job would create (dry run)",
        description=(
            "Print the objects the operator would create for a job. Defaults and the admin's policy come "
            "from this shell's MNV2_DEFAULT_* and MNV2_POLICY variables, as in the operator (MNV2_POLICY "
            "unset: the strictest policy); copy them from the operator's Deployment to see what it decides."
        ),
    )
    p.add_argument("-f", "--filename", required=True, help="MobileNetV2TrainingJob manifest ('-' for stdin)")
    p.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    p.set_defaults(run=_cmd_render)


def _add_crd_parser(sub: _Subparsers) -> None:
    p = sub.add_parser("crd", help="print the CustomResourceDefinition generated from the spec models")
    p.set_defaults(run=_cmd_crd)


def _add_status_parser(sub: _Subparsers) -> None:
    p = sub.add_parser("status", help="show a job's phase, progress and metrics")
    p.add_argument("job", help="job name")
    p.set_defaults(run=_cmd_status)
    _add_cluster_access(p)


def _add_plot_parser(sub: _Subparsers) -> None:
    p = sub.add_parser("plot", help="plot loss and accuracy curves to a PNG")
    p.add_argument("source", help="job name or path to a metrics.jsonl file")
    p.add_argument("-o", "--output", default=None, help="PNG path (default: <job>-curves.png)")
    p.set_defaults(run=_cmd_plot)
    _add_cluster_access(p)


def _add_cluster_access(p: argparse.ArgumentParser) -> None:
    """The namespace and kubeconfig flags of the commands that read a job from the cluster."""
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument(
        "--kubeconfig",
        default=None,
        help="kubeconfig path (default: $KUBECONFIG, else the pod's ServiceAccount, else ~/.kube/config)",
    )


def _add_cluster_parser(sub: _Subparsers) -> None:
    p = sub.add_parser(
        "cluster",
        help="run the local cluster in the foreground: the control plane, real nodes (a CPU and an Ascend "
        "stand-in by default) and cluster DNS",
    )
    p.add_argument(
        "--state-dir", default=".cluster", help="where the PKI, etcd data, logs and the kubeconfig go"
    )
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for every component")
    p.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="real CPU nodes (node-1, node-2, ...): the kubelet on containerd with pod networking and "
        "kube-proxy (root; see docs/real-nodes.md)",
    )
    p.add_argument(
        "--ascend-nodes",
        type=int,
        default=1,
        help="real Ascend nodes (ascend-1, ...): the device-plugin stand-in advertises 8 huawei.com/Ascend910 "
        "each; labelled and tainted as MindCluster's Ascend nodes are",
    )
    p.set_defaults(run=_cmd_cluster)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
