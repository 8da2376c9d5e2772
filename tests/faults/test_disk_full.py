"""A full disk under real commands (docs/reliability.md, "Disk full"): training, `label` and
`retrieve index` write onto a small tmpfs; each fails with exit 2 and a message naming the path
and the free space, leaves no temporary file and keeps the previous complete state, and the
same command after space is freed ends where an uninterrupted run ends. Needs root (mount);
skipped otherwise."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.cli.test_finetune_cli import TINY_MODEL, data_sets, recipe, sets
from tests.helpers.cli import run_evilm
from tests.helpers.label import make_tokenizer
from tests.retrieval.test_retrieve_cli import write_model


class SmallDisk:
    """A tmpfs of `size` bytes at `path`, resizable; unmounted at the end."""

    def __init__(self, path: Path, size: int):
        self.path = path
        path.mkdir(parents=True)
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root")
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode:
            pytest.skip("cannot mount a tmpfs here")

    def resize(self, size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def fill(self, leave: int) -> Path:
        """A filler file that leaves `leave` bytes free."""
        filler = self.path / "filler"
        free = os.statvfs(self.path).f_bavail * os.statvfs(self.path).f_frsize
        with open(filler, "wb") as fh:
            os.posix_fallocate(fh.fileno(), 0, max(0, free - leave))
        return filler

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)])


@pytest.fixture
def small_disk(tmp_path):
    disks = []

    def make(size: int) -> SmallDisk:
        disks.append(SmallDisk(tmp_path / f"disk{len(disks)}", size))
        return disks[-1]

    yield make
    for disk in disks:
        disk.close()


def _no_temporaries(directory: Path) -> None:
    debris = [p for p in directory.rglob("*") if p.name.endswith((".tmp", ".old", ".next"))]
    assert not debris, debris


def _full_disk_error(proc: subprocess.CompletedProcess, path_part: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "No space left on device" in proc.stderr and "free on its file system" in proc.stderr, proc.stderr
    assert path_part in proc.stderr and "Traceback" not in proc.stderr
    assert "Exception ignored" not in proc.stderr, proc.stderr  # no noise after the message (a tar stream's)


def _train_losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "lr" in r}


def test_training_on_a_full_disk_keeps_the_last_checkpoint_and_resumes(synth_dir, tmp_path, small_disk):
    def args(out: Path) -> list[str]:
        return ["finetune", recipe("retrieval"), *data_sets("retrieval", synth_dir), *sets(TINY_MODEL),
                *sets({"init.checkpoint": "null", "train.epochs": 1, "train.save_every": 2, "train.keep_checkpoints": 1, "train.log_every": 1,
                       "train.eval_every": 100, "output.dir": out})]

    ref = tmp_path / "ref"
    run_evilm(*args(ref))
    step = sum(f.stat().st_size for f in (ref / "step_00000007").iterdir())  # one step checkpoint's bytes
    disk = small_disk(int(1.6 * step) + (1 << 20))  # the first checkpoint fits, a second beside it does not
    out = disk.path / "run"
    proc = run_evilm(*args(out), check=False)
    _full_disk_error(proc, str(disk.path))
    assert [p.name for p in out.iterdir() if p.name.startswith("step_")] == ["step_00000002"]
    _no_temporaries(out)
    disk.resize(20 * step)
    run_evilm(*args(out), "--resume")
    assert _train_losses(out) == pytest.approx(_train_losses(ref), rel=1e-6)


def test_label_index_and_shards_on_a_full_disk_fail_cleanly_and_finish_after(synth_dir, tmp_path, small_disk):
    tok = make_tokenizer(tmp_path / "tok", codebook_size=16)
    model = write_model(tmp_path / "model", synth_dir, seed=0)
    commands = {
        "labels": ["label", "--manifest", synth_dir / "train.jsonl", "--tokenizer", tok, "--workers", "0"],
        "index": ["retrieve", "index", "--checkpoint", model, "--manifest", synth_dir / "test.jsonl", "--workers", "0",
                  "--batch-size", "3", "--part-size", "4"],
        "shards": ["data", "shards", synth_dir / "train.jsonl", "--size", "64", "--workers", "1"],
    }
    disk = small_disk(8 << 20)
    for name, command in commands.items():
        ref, out = tmp_path / f"ref-{name}", disk.path / name
        run_evilm(*command, "--out", ref)
        filler = disk.fill(leave=2048)
        _full_disk_error(run_evilm(*command, "--out", out, check=False), str(out))
        _no_temporaries(disk.path)
        filler.unlink()
        run_evilm(*command, "--out", out)
        files = sorted(p.name for p in ref.iterdir() if p.is_file() and not p.name.startswith("."))
        assert files and files == sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith("."))
        for f in files:
            if f not in ("meta.json", "index.yaml"):  # these name their own directory and time
                assert (ref / f).read_bytes() == (out / f).read_bytes(), (name, f)
