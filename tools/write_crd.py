"""Write the CustomResourceDefinition generated from the spec models into the repository.

The CRD is checked in twice, for plain installs (`manifests/crd/`) and for the Helm chart (`crds/`);
`python tools/write_crd.py` regenerates both from `mnv2 crd`'s output, `--check` reports drift (a
unit test fails on drift too).

A development tool of the source checkout (it is not part of the installed package).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mnv2_operator import crd

# This script's checkout: tools/ is a folder of the repository.
REPO_ROOT = Path(__file__).resolve().parent.parent
CRD_PATHS = (
    Path("manifests/crd") / crd.CRD_FILENAME,
    Path("charts/mnv2-operator/crds") / crd.CRD_FILENAME,
)


def drifted_files(root: Path = REPO_ROOT) -> list[Path]:
    """The checked-in copies under `root` that are missing or differ from the models' CRD."""
    text = crd.crd_yaml()
    return [rel for rel in CRD_PATHS if not (root / rel).is_file() or (root / rel).read_text() != text]


def write_crds(root: Path = REPO_ROOT) -> list[Path]:
    """Write both copies under `root`; the paths written, relative to it."""
    text = crd.crd_yaml()
    for rel in CRD_PATHS:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return list(CRD_PATHS)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/write_crd.py", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report drift; exit 1 if any")
    parser.add_argument(
        "--root", type=Path, default=REPO_ROOT, help="the repository (default: this checkout)"
    )
    args = parser.parse_args(argv)
    if args.check:
        drifted = drifted_files(args.root)
        for rel in drifted:
            print(f"out of date: {rel} (run: python tools/write_crd.py)", file=sys.stderr)
        return 1 if drifted else 0
    for rel in write_crds(args.root):
        print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
