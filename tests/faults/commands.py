"""The commands the fault suite runs, each as small as it can be while still doing its real work
in many small, separately saved pieces (a checkpoint every step, a part every 2 videos, a label
batch of 1), and the runner that starts one (through the fork server, forkserver.py), sees it
begin working and SIGKILLs it.

The command lines reuse the CLI tests' tiny settings (tests/cli/*, tests/retrieval/*): only the
keys that make pieces small are added here.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tests.cli.test_distributed_resume import tiny_pretrain
from tests.cli.test_finetune_cli import TINY_MODEL, data_sets, recipe, sets
from tests.cli.test_tokenize_cli import tiny as tiny_tokenizer
from tests.faults.forkserver import Child, ForkServer
from tests.helpers.cli import REPO

OFTEN = {"train.save_every": 1, "train.keep_checkpoints": 1, "train.eval_every": 100}  # eval only at the end
LABEL_FILES = ("codes.u16", "frames.i32", "nframes.i32", "status.u8", "keys.txt")
INDEX_FILES = ("embeddings.safetensors", "keys.txt")
PREDICTIONS = "predictions.jsonl"  # `predict --out`
SHARD_FILES = ("index.json", "samples.i64", "records.jsonl", "records.i64", "skipped.tsv",
               *(f"shard-{i:06d}.tar" for i in range(7)))  # 28 training clips, 4 per shard


@dataclass(frozen=True)
class Command:
    """One CLI command: `args(out)` writes into `out`; `started(out)` is true once it visibly works
    (its first checkpoint, cache or index file is on disk); `resume` says it takes --resume."""

    name: str
    args: Callable[[Path], list]
    started: Callable[[Path], bool]
    resume: bool
    seed: int  # of the random kill point


def _first_checkpoint(out: Path) -> bool:
    return out.is_dir() and any(out.glob("step_*"))  # complete ones only: temporaries start with "."


def build(synth: Path, tok: Path, labels: Path, model: Path, long: Path) -> dict[str, Command]:
    """Every command under test. `labels` is the label command's baseline cache (pretraining's
    MVM targets), `tok` an exported tiny tokenizer, `model` a tiny retrieval checkpoint, `long`
    synthetic long videos (`data synth --long`) for the window index."""
    recipes = REPO / "recipes/synthetic"
    label = ["label", "--manifest", synth / "train.jsonl", "--tokenizer", tok, "--workers", "0", "--batch-size", "1",
             "--flips", "--device", "cpu"]
    index = ["retrieve", "index", "--checkpoint", model, "--manifest", synth / "train.jsonl", "--workers", "0",
             "--batch-size", "1", "--part-size", "2", "--device", "cpu"]
    windows = ["retrieve", "index", "--checkpoint", model, "--manifest", long / "moments.jsonl", "--window", "2",
               "--stride", "1", "--workers", "0", "--part-size", "1", "--device", "cpu"]  # a part per span
    predict = ["predict", "--checkpoint", model, "--manifest", synth / "train.jsonl", "--labels",
               "moves left|moves right|grows|shrinks", "--template", "a red star {}", "--workers", "0",
               "--batch-size", "2", "--device", "cpu"]  # zero-shot labels: 14 batches of lines

    def tokenize_train(out: Path) -> list:  # 12 steps
        return ["tokenize-train", recipes / "tokenizer.yaml", *tiny_tokenizer(synth, out, epochs=3), *sets(OFTEN)]

    def pretrain(out: Path) -> list:  # 7 steps
        return ["pretrain", recipes / "pretrain.yaml", *tiny_pretrain(synth, (tok, labels), out, **{
            "train.epochs": 1, "data.val": "null", **OFTEN})]

    def shards(out: Path) -> list:  # 7 shards of 4 clips, one process: the kill lands between shards
        return ["data", "shards", synth / "train.jsonl", "--out", out, "--size", "64", "--samples-per-shard", "4",
                "--workers", "1"]

    def pretrain_shards(out: Path) -> list:  # 7 steps, frames from the shard baseline
        return ["pretrain", recipes / "pretrain.yaml", *tiny_pretrain(synth, (tok, labels), out, **{
            "train.epochs": 1, "data.val": "null", "data.train": labels.parent / "data-shards", **OFTEN})]

    def finetune(out: Path) -> list:  # 7 steps of retrieval from scratch
        return ["finetune", recipe("retrieval"), *data_sets("retrieval", synth), *sets({
            **TINY_MODEL, "init.checkpoint": "null", "train.epochs": 1, "train.log_every": 1, "output.dir": out,
            **OFTEN})]

    commands = [
        Command("tokenize-train", tokenize_train, _first_checkpoint, True, 11),
        Command("label", lambda out: [*label, "--out", out], lambda out: (out / "meta.json").is_file(), False, 12),
        Command("pretrain", pretrain, _first_checkpoint, True, 13),
        Command("finetune", finetune, _first_checkpoint, True, 14),
        Command("data shards", shards, lambda out: any((out / "parts").glob("shard-*.json")), False, 17),
        Command("pretrain shards", pretrain_shards, _first_checkpoint, True, 18),
        Command("retrieve index", lambda out: [*index, "--out", out], lambda out: (out / "index.yaml").is_file(),
                False, 15),
        Command("retrieve index --window", lambda out: [*windows, "--out", out],  # from its first span on
                lambda out: any((out / "parts").glob("*.safetensors")), False, 19),
        Command("predict", lambda out: [*predict, "--out", out / PREDICTIONS],
                lambda out: (out / PREDICTIONS).is_file() and (out / PREDICTIONS).stat().st_size > 0, False, 20),
        Command("quickstart", lambda out: ["quickstart", "--out", out, "--size", "quickstart-tiny", "--json"],
                lambda out: (out / "stages" / "data.json").is_file(), False, 16),
    ]
    return {c.name: c for c in commands}


def train_losses(run: Path) -> dict[int, float]:
    """{step: loss} of the train rows (those with an lr) of run/metrics.jsonl."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows if "lr" in r}


def file_bytes(directory: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in names}


# --------------------------------------------------------------------------- running and killing


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    remaining: float  # seconds from the moment `started` held to the exit
    killed: bool = False


def _start(server: ForkServer, args: list, out: Path, tag: str) -> tuple[Child, Path]:
    """Start `evilm args` (its own process group); output to files beside `out`, so `out` is
    created by the command itself."""
    logs = out.parent / f"{out.name}.{tag}"
    logs.mkdir(parents=True, exist_ok=True)
    env = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return server.start(args, logs / "stdout", logs / "stderr", cwd=out.parent, env=env), logs


def run(server: ForkServer, *args, cwd: Path) -> subprocess.CompletedProcess:
    """`evilm args` to the end, as tests.helpers.cli.run_evilm(check=False) gives it."""
    child, logs = _start(server, list(args), cwd / "cmd", f"{time.monotonic_ns()}")
    code = child.wait()
    return subprocess.CompletedProcess(args, code, (logs / "stdout").read_text(), (logs / "stderr").read_text())


def _wait_started(proc: Child, started: Callable[[], bool], timeout: float) -> float | None:
    """The monotonic time `started()` first held; None if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if started():
            return time.monotonic()
        if proc.poll() is not None:
            return None
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"the command showed no sign of working within {timeout} s")


def _finish(proc: Child, logs: Path, since: float | None, timeout: float) -> Outcome:
    proc.wait(timeout=timeout)
    end = time.monotonic()
    return Outcome(proc.returncode, (logs / "stdout").read_text(), (logs / "stderr").read_text(),
                   end - since if since is not None else 0.0)


def run_timed(server: ForkServer, command: Command, out: Path, timeout: float = 300) -> Outcome:
    """Run to the end, measuring how long it works after `started` holds (the baseline)."""
    proc, logs = _start(server, command.args(out), out, "baseline")
    since = _wait_started(proc, lambda: command.started(out), timeout)
    result = _finish(proc, logs, since, timeout)
    assert result.returncode == 0, f"{command.name} exited {result.returncode}\n{result.stderr[-3000:]}"
    return result


def run_killed(server: ForkServer, command: Command, out: Path, remaining: float, attempt: int = 0,
               timeout: float = 300) -> Outcome:
    """Start the command, wait until it works, sleep a seeded random fraction of the baseline's
    `remaining` time (seed: the command's, and the attempt), then SIGKILL its process group (unless
    it has already exited: then it must have succeeded, and `killed` is False)."""
    delay = random.Random(command.seed * 1000 + attempt).uniform(0.05, 0.7) * remaining
    proc, logs = _start(server, command.args(out), out, "killed")
    since = _wait_started(proc, lambda: command.started(out), timeout)
    if since is not None:
        time.sleep(max(0.0, delay - (time.monotonic() - since)))
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group of the command this test started
        except ProcessLookupError:  # it ended in between
            pass
    result = _finish(proc, logs, since, timeout)
    result.killed = result.returncode == -signal.SIGKILL
    assert result.killed or result.returncode == 0, \
        f"{command.name} exited {result.returncode}\n{result.stderr[-3000:]}"
    return result
