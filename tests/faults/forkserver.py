"""A fork server for `evilm`: one Python process imports torch, timm and the CLI once, then forks
a child per command, so a command costs its own work instead of ~4 s of imports on one CPU.

Each child is a real process, as the console script would be: its own session and process group
(SIGKILL reaches it and nothing else), its own stdout/stderr files, `evilm_cli.main.main()` with
its argv, and its exit status (a negative signal number when killed), so exit codes, stderr and
kills behave as for `evilm ...` in a shell. What differs from a fresh interpreter: the imports
are done before the environment given here is applied (OMP_NUM_THREADS is set for the server
itself), and the children share the server's hash seed.

Protocol (lines on the server's stdin/stdout): the client sends a JSON request
{"args", "cwd", "env", "stdout", "stderr"}; the server answers "pid <pid>", and later
"exit <pid> <code>" once it has reaped that child. EOF on stdin: wait for the children, exit.
Run as `python -m tests.faults.forkserver`; `ForkServer` below is the client.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

PRELOAD = ("torch", "timm", "evilm_cli.main", "evilm_core.tokenizer.train", "evilm_core.pretrain.train",
           "evilm_core.finetune.run", "evilm_core.label.labeler", "evilm_core.retrieval.build",
           "evilm_core.retrieval.query", "evilm_core.quickstart.pipeline")


def _child(req: dict) -> None:
    """In the forked child: become the command, never return."""
    code = 1
    try:
        os.setsid()
        os.chdir(req["cwd"])
        os.environ.update(req["env"])
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                (2, req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
            os.dup2(os.open(path, flags, 0o644), fd)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        sys.argv = ["evilm", *req["args"]]
        try:
            from evilm_cli.main import main

            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
        except BaseException:
            sys.excepthook(*sys.exc_info())  # what the interpreter prints: "Traceback ..."
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def serve() -> None:
    for name in PRELOAD:
        try:
            __import__(name)
        except Exception:  # the child meets the same error at its own import, and reports it
            pass
    out, buf, children, eof = sys.stdout, b"", set(), False
    out.write("ready\n")
    out.flush()
    while not eof or children:
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            children.discard(pid)
            out.write(f"exit {pid} {os.waitstatus_to_exitcode(status)}\n")
            out.flush()
        if eof:
            time.sleep(0.002)
            continue
        if select.select([0], [], [], 0.002)[0]:
            data = os.read(0, 65536)
            eof, buf = not data, buf + data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                pid = os.fork()
                if pid == 0:
                    _child(json.loads(line))
                children.add(pid)
                out.write(f"pid {pid}\n")
                out.flush()


class Child:
    """A command the server forked: pid, poll(), wait() as for subprocess.Popen."""

    def __init__(self, server: "ForkServer", pid: int):
        self.server, self.pid, self.returncode = server, pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.server.drain(0)
            self.returncode = self.server.exits.pop(self.pid, None)
        return self.returncode

    def wait(self, timeout: float = 600) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"evilm (pid {self.pid}) still running after {timeout} s")
            self.server.drain(0.05)
        return self.returncode


class ForkServer:
    def __init__(self, cwd: Path, env: dict):
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.faults.forkserver"], cwd=cwd, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.exits: dict[int, int] = {}
        self.buf = b""
        assert self._line(120) == "ready", "the fork server did not start"

    def _line(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left < 0 or not select.select([fd], [], [], max(0.0, left))[0]:
                return None
            data = os.read(fd, 65536)
            if not data:
                raise RuntimeError(f"the fork server exited ({self.proc.wait()})")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def drain(self, timeout: float) -> None:
        """Read the exit reports that have arrived (waiting up to `timeout` for the first)."""
        line = self._line(timeout)
        while line is not None:
            kind, pid, *rest = line.split()
            assert kind == "exit", line
            self.exits[int(pid)] = int(rest[0])
            line = self._line(0)

    def start(self, args: list, stdout: Path, stderr: Path, cwd: Path, env: dict) -> Child:
        req = {"args": [str(a) for a in args], "cwd": str(cwd), "env": env, "stdout": str(stdout),
               "stderr": str(stderr)}
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()
        while True:
            line = self._line(60)
            assert line is not None, "the fork server did not answer"
            kind, pid, *rest = line.split()
            if kind == "pid":
                return Child(self, int(pid))
            self.exits[int(pid)] = int(rest[0])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=600)


if __name__ == "__main__":
    serve()
