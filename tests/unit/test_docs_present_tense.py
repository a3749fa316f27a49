"""The docs, code and tests speak of the product as it is.

No passage numbers the work periods or issues the project was built in, says what the code used to
do, or describes the machines it was written on: a reader needs what is true of the product now, and
a measurement gives its own date, machine and load. Each pattern below is narrow enough that the
product's own text (a token "used to authenticate", a pod "no longer running") does not match it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support import REPO_ROOT

REPO = REPO_ROOT
#: What is checked: the product's docs, code, packaging and tests.
SCANNED = (
    "README.md",
    "Makefile",
    "docs",
    "benchmarks",
    "docker",
    "operator",
    "trainer",
    "charts",
    "manifests",
    "tests",
)
SUFFIXES = {
    ".md",
    ".py",
    ".pyi",
    ".cc",
    ".go",
    ".yaml",
    ".yml",
    ".j2",
    ".json",
    ".txt",
    ".tpl",
    ".toml",
    ".cfg",
    "",
}
SKIPPED_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache", "node_modules"}

#: name -> pattern; each names what it forbids.
FORBIDDEN = {
    "a numbered work period": re.compile(r"\bsessions?[ -]\d", re.IGNORECASE),
    "an issue number": re.compile(r"\bissues?[ -]#?\d", re.IGNORECASE),
    "what the code used to do": re.compile(
        r"\b(it|they|we|this|that|which|who|code|operator|trainer|handler|pipeline|kernel)\s+used to\b"
        r"|\bused to be\b",
        re.IGNORECASE,
    ),
    "an earlier version of the code": re.compile(
        r"\b(old|new|earlier|previous|former) (handler |operator |trainer )?code\b"
        r"|\bbefore (the|both)( \w+)? (changes|speed-ups?)\b",
        re.IGNORECASE,
    ),
    "the machines the project was written on": re.compile(
        r"\bthis project'?s\b.{0,20}\bmachines?\b"
        r"|\bthis \d+-core machine\b"
        r"|\bdevelopment machines?\b"
        r"|\bwhere (it|they|the \w+) (was|were) (written|developed|built)\b"
        r"|\bcould not be built where\b",
        re.IGNORECASE,
    ),
}


def scanned_files() -> list[Path]:
    files: list[Path] = []
    for name in SCANNED:
        root = REPO / name
        candidates = [root] if root.is_file() else sorted(root.rglob("*"))
        for path in candidates:
            if (
                path.is_file()
                and path.suffix in SUFFIXES | {".Dockerfile"}
                and not SKIPPED_DIRS & set(path.relative_to(REPO).parts)
                and path != Path(__file__).resolve()
            ):
                files.append(path)
    return files


def _cites_another_project(before: str) -> bool:
    """Whether the words just before an issue number name another project (``HAMi's ... issue #139``,
    ``vLLM-Ascend issue #9490``): a word with a capital after its first letter (HAMi, vLLM-Ascend,
    MindSpore, CANN). The product's own issues are cited plainly (``issue 8``, ``of issue #8``)."""
    words = [w.strip("()[],.;:`'\"") for w in before.split()[-5:]]
    return any(any(c.isupper() for c in w[1:]) for w in words)


def offences(text: str) -> list[tuple[int, str, str]]:
    """(line number, what it is, the line) for every forbidden passage in ``text``."""
    lines = text.splitlines()
    found = []
    for what, pattern in FORBIDDEN.items():
        for match in pattern.finditer(text):
            if what == "an issue number" and _cites_another_project(
                text[max(0, match.start() - 80) : match.start()]
            ):
                continue
            number = text.count("\n", 0, match.start()) + 1
            found.append((number, what, lines[number - 1].strip()))
    return sorted(found)


def test_docs_code_and_tests_speak_in_the_present_tense() -> None:
    files = scanned_files()
    assert len(files) > 100, "the scan found too few files: has the layout changed?"
    problems = [
        f"{path.relative_to(REPO)}:{number}: {what}: {line}"
        for path in files
        for number, what, line in offences(path.read_text(encoding="utf-8", errors="replace"))
    ]
    assert not problems, (
        "say what the product does now (a measurement keeps its date, machine and load):\n"
        + ("\n".join(problems))
    )


@pytest.mark.parametrize(
    "line",
    [
        "Session 2, with the C++ depthwise kernel",
        "the session-1 code",
        "| session 1 | 100 | 2.83 |",
        "Performance comparisons of issue 8.",
        "The duplicate-create bug of issue #8",
        "Issue 8: jobs applied at once",
        "The operator used to reconcile a second time",
        "after a 409 it used to patch every child",
        "Old and new handler code back to back",
        "38-40 ms before the YAML speed-ups",
        "On this project's 2-core machine (shared with other work)",
        "(kubernetes client, one thread, this 2-core machine)",
        "there is no container engine on its development machines",
        "It could not be built where it was written (no container engine there)",
    ],
)
def test_patterns_catch_history(line: str) -> None:
    assert offences(line), line


@pytest.mark.parametrize(
    "line",
    [
        "The token used to authenticate the trainer's status patches.",
        "a pod that is no longer running",
        "measured on a 2-core machine shared with other work, load ~2",
        "the session fixture starts one sandbox",
        'scope="session"',
        "Keys of older MindCV versions that MindCV 0.3.0 no longer accepts",
        "see https://github.com/kubernetes/kubernetes/issues/12345",
        "nor in the group (HAMi's Ascend device plugin issue #139 shows exactly this",
        "the uid must have an entry in /etc/passwd (HCCL fails otherwise, vLLM-Ascend\nissue #9490), read",
        "the job's metrics.jsonl on this machine",
    ],
)
def test_patterns_spare_the_products_text(line: str) -> None:
    assert not offences(line), line
