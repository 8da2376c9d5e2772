"""Worker processes (docs/reliability.md, "Workers"), as a user meets them:

- SIGKILL of the main process of every command that starts workers (`data shards`, `data check`,
  `data synth`, `label`, `retrieve index`, `tokenize-train` with loader workers): its workers are
  gone within seconds and nothing more is written into --out;
- a clip whose decoder crashes (SIGSEGV in the worker, injected by a sitecustomize that stands in
  for a native decoder bug) costs that clip in `data shards` and `data check`, counted corrupt with
  the cause, and the run ends normally; under a DataLoader (`label`) the run ends with one
  paragraph that says how to find the clip, and the work done is kept.

Every command runs as the console script (its workers are real spawned interpreters).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.test_tokenize_cli import tiny as tiny_tokenizer
from tests.helpers.cli import REPO, run_evilm

CRASH = '''
import os, signal, time
import evilm_core.data.video.read as read
_decode = read.read_frames
def read_frames(path, *args, **kwargs):  # a native decoder bug, for videos named CRASH
    if "CRASH" in str(path):
        os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(float(os.environ.get("SLOW_DECODE", "0")))  # a slow decoder: a job is still running when killed
    return _decode(path, *args, **kwargs)
read.read_frames = read_frames
'''


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def snapshot(out: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in out.rglob("*") if p.is_file()} if out.is_dir() else {}


@pytest.fixture(scope="module")
def crash_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("crash_site")
    (site / "sitecustomize.py").write_text(CRASH)
    return site


@pytest.fixture(scope="module")
def crash_manifest(synth_dir, tmp_path_factory) -> Path:
    """12 synth clips, the 4th of them a copy named CRASH.mp4."""
    work = tmp_path_factory.mktemp("crash")
    rows = [json.loads(line) for line in (synth_dir / "train.jsonl").read_text().splitlines()][:11]
    rows = [{**r, "video": str(synth_dir / r["video"])} for r in rows]
    (work / "CRASH.mp4").write_bytes((synth_dir / rows[0]["video"]).read_bytes())
    rows.insert(3, {"video": str(work / "CRASH.mp4"), "caption": "a clip whose decoder crashes"})
    (work / "crash.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return work / "crash.jsonl"


def worker_commands(synth: Path, tok: Path, model: Path, out: Path) -> dict[str, list]:
    return {
        "data shards": ["data", "shards", synth / "train.jsonl", "--out", out, "--size", "64", "--samples-per-shard",
                        "14", "--workers", "2"],
        "data check": ["data", "check", synth / "train.jsonl", "--image-size", "64", "--workers", "2"],
        "data synth": ["data", "synth", out, "--videos", "400", "--size", "128", "--workers", "2"],
        "label": ["label", "--manifest", synth / "train.jsonl", "--tokenizer", tok, "--out", out, "--workers", "2",
                  "--batch-size", "1"],
        "retrieve index": ["retrieve", "index", "--checkpoint", model, "--manifest", synth / "train.jsonl", "--out",
                           out, "--workers", "2", "--batch-size", "1", "--part-size", "1"],
        "tokenize-train": ["tokenize-train", REPO / "recipes/synthetic/tokenizer.yaml",
                           *tiny_tokenizer(synth, out, epochs=20), "--set", "data.num_workers=2",
                           "--set", "data.batch_size=2"],
    }


@pytest.mark.parametrize("name", ["data shards", "data check", "data synth", "label", "retrieve index",
                                  "tokenize-train"])
def test_workers_die_with_their_parent(name, synth_dir, tokenizer_dir, model_dir, crash_site, tmp_path):
    out = tmp_path / "out"
    args = worker_commands(synth_dir, tokenizer_dir, model_dir, out)[name]
    exe = Path(sys.executable).with_name("evilm")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SLOW_DECODE": "1", "PYTHONPATH": str(crash_site)}
    proc = subprocess.Popen([str(exe), *map(str, args)], cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline, workers = time.monotonic() + 120, []
        while time.monotonic() < deadline and proc.poll() is None:
            workers = [p for p in children(proc.pid) if "resource_tracker" not in Path(f"/proc/{p}/cmdline")
                       .read_bytes().decode(errors="replace")]
            if len(workers) >= 2:
                break
            time.sleep(0.05)
        assert len(workers) >= 2, f"{name}: no workers started ({proc.poll()}): {proc.stderr.read()[-2000:]}"
        time.sleep(0.5)  # working
        assert proc.poll() is None, f"{name} ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)  # the main process only, as the OOM killer or a scheduler would
        proc.wait()
        killed_at = time.monotonic()
        while any(alive(w) for w in workers) and time.monotonic() - killed_at < 5:
            time.sleep(0.1)
        assert not any(alive(w) for w in workers), f"{name}: workers {workers} outlived their parent by 5 s"
        gone = time.monotonic() - killed_at
        before = snapshot(out)
        time.sleep(1.0)
        assert snapshot(out) == before, f"{name}: something still writes into {out}"
        print(f"{name}: workers gone {gone:.1f} s after the kill")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this test started, should anything remain
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def model_dir(synth_dir, tmp_path_factory) -> Path:
    from tests.retrieval.test_retrieve_cli import write_model

    return write_model(tmp_path_factory.mktemp("workers_model") / "model", synth_dir, seed=0)


def test_a_crashing_decoder_costs_its_clip_not_the_run(crash_manifest, crash_site, tokenizer_dir, tmp_path):
    env = {"PYTHONPATH": f"{crash_site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    crash = str(crash_manifest.parent / "CRASH.mp4")
    shards = run_evilm("data", "shards", crash_manifest, "--out", tmp_path / "shards", "--size", "64",
                       "--samples-per-shard", "4", "--workers", "2", "--json", env=env, check=False)
    assert shards.returncode == 0 and "Traceback" not in shards.stderr, shards.stderr[-3000:]
    summary = json.loads(shards.stdout.splitlines()[-1])
    assert (summary["clips"], summary["written"], summary["skipped"]) == (12, 11, 1)
    [row] = [line.split("\t") for line in (tmp_path / "shards" / "skipped.tsv").read_text().splitlines()]
    assert row[1:] == [crash, "corrupt", "the worker decoding it was killed by SIGSEGV (a crash in native code)"]
    assert not [p for p in (tmp_path / "shards").rglob(".*")]  # the dead worker's temporary tar is gone
    check = run_evilm("data", "check", crash_manifest, "--image-size", "64", "--workers", "2", "--json", env=env,
                      check=False)
    assert check.returncode == 0 and "Traceback" not in check.stderr, check.stderr[-3000:]
    report = json.loads(check.stdout.splitlines()[-1])
    assert (report["ok"], report["corrupt"]) == (11, 1) and report["problems"][0]["video"] == crash
    assert "SIGSEGV" in report["problems"][0]["detail"]
    # a DataLoader cannot give the clip back: one paragraph that says how to find it, exit 2
    label = run_evilm("label", "--manifest", crash_manifest, "--tokenizer", tokenizer_dir, "--out",
                      tmp_path / "labels", "--workers", "1", "--batch-size", "2", env=env, check=False)
    assert label.returncode == 2 and "Traceback" not in label.stderr, label.stderr[-3000:]
    assert "a data loader worker process died" in label.stderr and "evilm data check" in label.stderr


def test_a_loader_worker_death_is_told_apart_from_other_errors():
    """PyTorch reports a dead DataLoader worker as a RuntimeError from its SIGCHLD handler, which
    may fire anywhere in the main process, and sometimes first as the broken pipe to the worker:
    each becomes the one paragraph (exit 2 in the CLI); anything else stays what it is."""
    from evilm_core.workers import loader_worker_death

    killed = RuntimeError("DataLoader worker (pid 123) is killed by signal: Segmentation fault. ")
    assert "(DataLoader worker (pid 123) is killed by signal: Segmentation fault.)" in str(loader_worker_death(killed))
    assert "its pipe closed: ConnectionResetError" in str(loader_worker_death(ConnectionResetError(104), True))
    assert loader_worker_death(ConnectionResetError(104)) is None  # outside the loader: not ours to name
    assert loader_worker_death(RuntimeError("CUDA out of memory")) is None
    assert loader_worker_death(ValueError("DataLoader worker")) is None
