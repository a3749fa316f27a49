"""`mnv2 cluster`'s flags and the nodes they name (the command itself runs in tests/contract)."""

from __future__ import annotations

import pytest
from mnv2_cluster import cli as cluster_cli
from mnv2_operator.cli import build_parser


def test_by_default_one_cpu_and_one_ascend_real_node() -> None:
    args = build_parser().parse_args(["cluster"])
    assert (args.nodes, args.ascend_nodes) == (1, 1)
    assert cluster_cli.node_names(args.nodes, args.ascend_nodes) == [("node-1", 0), ("ascend-1", 8)]


def test_node_counts_name_cpu_nodes_first() -> None:
    args = build_parser().parse_args(["cluster", "--nodes", "2", "--ascend-nodes", "0"])
    assert cluster_cli.node_names(args.nodes, args.ascend_nodes) == [("node-1", 0), ("node-2", 0)]


@pytest.mark.parametrize(("nodes", "ascend"), [(0, 0), (-1, 1)])
def test_no_nodes_or_a_negative_count_is_refused(nodes: int, ascend: int) -> None:
    with pytest.raises(ValueError, match="--nodes and --ascend-nodes"):
        cluster_cli.node_names(nodes, ascend)


@pytest.mark.parametrize("flag", ["--real-nodes", "--real-ascend-nodes"])
def test_the_real_node_flags_are_gone(flag: str) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["cluster", flag, "1"])
