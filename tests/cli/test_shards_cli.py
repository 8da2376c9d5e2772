"""`evilm data shards` as a user runs it: the --json summary and a no-op re-run, shard sets fed to
tokenize-train, label, pretrain and retrieve index, video2dataset tars with a corrupt member,
and user errors (exit 2, one message, no traceback)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from evilm_core.data.records.manifest import read_manifest
from evilm_core.data.shards.writer import ShardSettings
from evilm_core.prepare.shards import ShardRequest, build_shards
from tests.cli.test_distributed_resume import tiny_pretrain
from tests.cli.test_tokenize_cli import tiny
from tests.helpers.cli import REPO, last_json, run_evilm
from tests.helpers.webdataset import write_video2dataset_tar

SHARD_ARGS = ("--size", "64", "--candidates", "4")


def tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def sets(**values) -> list[str]:
    return [arg for k, v in values.items() for arg in ("--set", f"{k.replace('__', '.')}={v}")]


def user_error(*args: str) -> str:
    """Run `evilm ARGS`, expecting a user error: exit 2 and no traceback; returns stderr."""
    proc = run_evilm(*args, check=False, timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    return proc.stderr


@pytest.fixture(scope="module")
def shards(synth_dir, tmp_path_factory):
    """train/ through the CLI (workers 2, 4 shards of 8); val/ and test/ in process."""
    base = tmp_path_factory.mktemp("cli_shards")
    proc = run_evilm("data", "shards", str(synth_dir / "train.jsonl"), "--out", str(base / "train"), *SHARD_ARGS,
                     "--samples-per-shard", "8", "--workers", "2", "--json")
    for split in ("val", "test"):
        build_shards(ShardRequest(input=str(synth_dir / f"{split}.jsonl"), out=str(base / split),
                                  settings=ShardSettings(candidates=4, size=64)))
    return base, last_json(proc.stdout)


def test_json_summary_and_a_no_op_rerun(shards, synth_dir):
    """The summary counts clips, written, skipped, shards, seconds; the same command again writes nothing."""
    base, summary = shards
    assert {"clips", "written", "skipped", "shards", "seconds"} <= set(summary)
    assert (summary["clips"], summary["written"], summary["skipped"], summary["shards"]) == (28, 28, 0, 4)
    before = tree(base / "train")
    again = last_json(run_evilm("data", "shards", str(synth_dir / "train.jsonl"), "--out", str(base / "train"),
                                *SHARD_ARGS, "--samples-per-shard", "8", "--workers", "2", "--json").stdout)
    assert again["written_this_run"] == 0 and again["written"] == 28
    assert tree(base / "train") == before


def test_shards_train_label_pretrain_and_index(shards, synth_dir, tmp_path):
    """tokenize-train, label, pretrain (MVM targets from the shard labels) and retrieve index, all on shards."""
    base, _ = shards
    train, val, test = base / "train", base / "val", base / "test"
    tok = tmp_path / "tok"
    run_evilm("tokenize-train", str(REPO / "recipes/synthetic/tokenizer.yaml"), *tiny(synth_dir, tok, epochs=1),
              *sets(data__train=train, data__val=val))
    labels = tmp_path / "labels"
    label = last_json(run_evilm("label", "--manifest", str(train), "--tokenizer", str(tok / "final"), "--out",
                                str(labels), "--candidates", "4", "--workers", "0", "--device", "cpu",
                                "--json").stdout)
    assert label["labelled"] == 28 and label["skipped"] == 0
    pre = tmp_path / "pre"
    args = tiny_pretrain(synth_dir, (tok / "final", labels), pre,
                         **{"data.train": train, "train.epochs": 1, "mvm.candidates": 4})
    run_evilm("pretrain", str(REPO / "recipes/synthetic/pretrain.yaml"), *args)
    rows = [json.loads(line) for line in (pre / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "lr" in r]
    assert train_rows and all("data_wait_share" in r and "step_s" in r for r in train_rows)
    assert 0 <= train_rows[-1]["data_wait_share"] <= 1
    index = tmp_path / "index"
    run_evilm("retrieve", "index", "--checkpoint", str(pre / "final"), "--manifest", str(test), "--out", str(index),
              "--workers", "0", "--device", "cpu", "--json")
    keys = (index / "keys.txt").read_text().split("\n")[:-1]
    assert keys == list(dict.fromkeys(r.video for r in read_manifest(synth_dir / "test.jsonl")))
    sheet = run_evilm("retrieve", "query", "--index", str(index), "-k", "3", "a red circle",
                      "--contact-sheet", str(tmp_path / "sheet.png"))  # frames come from the shards
    assert "unreadable" not in sheet.stderr and (tmp_path / "sheet.png").is_file()


def test_video2dataset_tar_with_a_corrupt_member(synth_dir, tmp_path):
    """check counts the corrupt member, shards skips it, retrieve index works on the rest: exit 0 throughout."""
    from tests.retrieval.test_retrieve_cli import write_model

    clips = [(synth_dir / r.video, r.caption) for r in read_manifest(synth_dir / "train.jsonl")[:4]]
    tars = tmp_path / "tars"
    write_video2dataset_tar(tars / "00000.tar", clips, corrupt=(1,))
    check = run_evilm("data", "check", str(tars), "--image-size", "64", "--workers", "1", "--json")
    report = last_json(check.stdout)
    assert (report["format"], report["total"], report["ok"], report["corrupt"]) == ("webdataset", 4, 3, 1)
    out = tmp_path / "s"
    built = run_evilm("data", "shards", str(tars), "--out", str(out), *SHARD_ARGS, "--workers", "1", "--json")
    summary = last_json(built.stdout)
    assert (summary["clips"], summary["written"], summary["skipped"]) == (4, 3, 1)
    assert "00000.tar/000000001.mp4\tcorrupt" in (out / "skipped.tsv").read_text()
    model = write_model(tmp_path / "model", synth_dir, seed=0)
    index = run_evilm("retrieve", "index", "--checkpoint", str(model), "--manifest", str(out), "--out",
                      str(tmp_path / "index"), "--workers", "0", "--device", "cpu", "--json")
    keys = (tmp_path / "index" / "keys.txt").read_text().split("\n")[:-1]
    assert keys == [f"00000.tar/00000000{i}.mp4" for i in (0, 2, 3)]
    assert all("Traceback" not in p.stderr for p in (check, built, index))


def test_plain_empty_directory_as_training_data(synth_dir, tmp_path):
    """data.train = an empty directory (neither manifest nor shard set): a user error."""
    (tmp_path / "empty").mkdir()
    err = user_error("tokenize-train", str(REPO / "recipes/synthetic/tokenizer.yaml"),
                     *tiny(synth_dir, tmp_path / "run", epochs=1), *sets(data__train=tmp_path / "empty"))
    assert "empty" in err


def test_shards_needs_input_or_merge(tmp_path):
    """Neither INPUT nor --merge; --merge where no run planned anything."""
    assert "--merge" in user_error("data", "shards", "--out", str(tmp_path / "o"))
    (tmp_path / "none").mkdir()
    assert "nothing to merge" in user_error("data", "shards", "--merge", "--out", str(tmp_path / "none"))


def test_check_names_a_deleted_shard_file(shards, tmp_path):
    """`evilm data check` on a shard set missing a shard file names the file."""
    broken = tmp_path / "broken"
    shutil.copytree(shards[0] / "val", broken)
    (broken / "shard-000000.tar").unlink()
    assert "shard-000000.tar" in user_error("data", "check", str(broken), "--workers", "1")
