"""Running `evilm` as a user does, and reading its `--json` result."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_evilm(*args: str, cwd: Path | str | None = None, check: bool = True, timeout: int = 600,
              env: dict | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    """Run the installed `evilm` console script (falls back to `python -m evilm_cli.main`)."""
    exe = Path(sys.executable).with_name("evilm")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "evilm_cli.main"]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run([*cmd, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=full_env, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"evilm {' '.join(map(str, args))} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
                             f"stderr:\n{proc.stderr}")
    return proc


def last_json(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines, "no output on stdout"
    return json.loads(lines[-1])


def hold_lock(path: Path) -> subprocess.Popen:
    """Another process holding the POSIX lock on `path` (as a concurrent evilm run would); kill it
    to see the lock end with its process."""
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR); "
            "fcntl.lockf(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@contextmanager
def in_process():
    """Run `evilm` commands inside this process through the Typer app (one torch import for a test
    module, one intra-op thread); yields run(*args) -> click's Result (stdout, exception, exit_code).
    main()'s exit codes do not apply: an EvilmError is the result's exception."""
    import torch
    from typer.testing import CliRunner

    quiet = logging.NullHandler()  # keeps setup_logging from binding a handler to the runner's stderr
    logger = logging.getLogger("evilm")
    logger.addHandler(quiet)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    from evilm_cli.main import app

    def run(*args):
        return CliRunner().invoke(app, [str(a) for a in args])

    try:
        yield run
    finally:
        logger.removeHandler(quiet)
        torch.set_num_threads(threads)
