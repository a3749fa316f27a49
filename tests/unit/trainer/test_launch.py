"""mnv2_trainer.launch: signals turned into what msrun handles, exit statuses, nothing left behind.

The launcher runs as a subprocess here (it installs signal handlers) with small Python commands in
msrun's place; tests/integration/trainer/test_launch_pid1.py runs it with the real msrun as PID 1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals and /proc: Linux")


def launch(tmp_path: Path, code: str, **env: str) -> subprocess.Popen[str]:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.Popen(
        [sys.executable, "-m", "mnv2_trainer.launch", sys.executable, str(script), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env},
    )


def wait_file(path: Path, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().endswith("\n")):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.05)
    return path.read_text()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# A stand-in for msrun: records the signals it gets, exits 0 on SIGINT as msrun does.
MSRUN_LIKE = """
    import signal, sys, time
    from pathlib import Path
    out = Path(sys.argv[1])
    def on_int(signum, frame):
        (out / "got").write_text(signal.Signals(signum).name + "\\n")
        sys.exit(0)
    signal.signal(signal.SIGINT, on_int)
    signal.signal(signal.SIGUSR1, lambda s, f: (out / "usr1").write_text("SIGUSR1\\n"))
    (out / "ready").write_text("ready\\n")
    while True:
        time.sleep(0.1)
"""


def test_exit_status_is_the_commands() -> None:
    for code, expected in (
        ("raise SystemExit(3)", 3),
        ("pass", 0),
        ("import os; os.kill(os.getpid(), 9)", 137),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "mnv2_trainer.launch", sys.executable, "-c", code], timeout=60
        )
        assert done.returncode == expected, code


def test_missing_command_is_127_with_a_message() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mnv2_trainer.launch", "no-such-msrun"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 127 and "cannot start 'no-such-msrun'" in done.stderr


def test_sigterm_becomes_sigint_and_the_exit_says_terminated(tmp_path: Path) -> None:
    proc = launch(tmp_path, MSRUN_LIKE)
    wait_file(tmp_path / "ready")
    proc.send_signal(signal.SIGUSR1)  # forwarded as it is
    assert wait_file(tmp_path / "usr1") == "SIGUSR1\n"
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert time.monotonic() - start < 5, out
    assert (tmp_path / "got").read_text() == "SIGINT\n"
    # msrun exits 0 after SIGINT; a stopped pod must not look like a finished training.
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "SIGTERM: stopping" in out


def test_a_command_that_ignores_sigint_is_killed_after_the_stop_timeout(tmp_path: Path) -> None:
    stubborn = """
        import signal, sys, time
        from pathlib import Path
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        (Path(sys.argv[1]) / "ready").write_text("ready\\n")
        while True:
            time.sleep(0.1)
    """
    proc = launch(tmp_path, stubborn, MNV2_LAUNCH_STOP_TIMEOUT="1")
    wait_file(tmp_path / "ready")
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert 1 <= time.monotonic() - start < 6, out
    assert proc.returncode == 143 and "SIGKILL" in out


def test_processes_left_in_other_sessions_are_stopped_and_reaped(tmp_path: Path) -> None:
    """msrun starts workers with setsid; when msrun ends without them, the launcher ends them."""
    leaver = """
        import subprocess, sys, time
        from pathlib import Path
        out = Path(sys.argv[1])
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
        (out / "worker").write_text(f"{worker.pid}\\n")
    """
    proc = launch(tmp_path, leaver, MNV2_LAUNCH_STOP_TIMEOUT="5")
    worker = int(wait_file(tmp_path / "worker"))
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert not alive(worker), out
    assert "left behind" in out


def test_sigterm_also_ends_workers_in_other_sessions(tmp_path: Path) -> None:
    """The gang case: msrun dies on the signal without cleaning up; its setsid'd workers must not live on."""
    careless = """
        import subprocess, sys, time
        from pathlib import Path
        out = Path(sys.argv[1])
        workers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
                   for _ in range(2)]
        (out / "ready").write_text(" ".join(str(w.pid) for w in workers) + "\\n")
        while True:
            time.sleep(0.1)  # SIGINT's default: KeyboardInterrupt, workers left running
    """
    proc = launch(tmp_path, careless)
    workers = [int(p) for p in wait_file(tmp_path / "ready").split()]
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 143, out
    assert time.monotonic() - start < 5, out
    assert not any(alive(w) for w in workers), out
