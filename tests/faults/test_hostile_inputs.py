"""Inputs from the internet, as a user meets them (docs/reliability.md, "Bounded reading" and
"Model directories"): each bad item costs one skipped, counted clip or one clear error, never
the machine's memory, and nothing is written outside --out.

- a video2dataset tar whose member claims 50 GB (a hole of a sparse file: no disk) beside one of
  256 MiB: `data shards` and `data check` with their address space capped at 1 GiB skip the first
  unread and decode the second from a copy in --out;
- duplicate keys in a tar (right after each other and further on): listed as duplicates, the
  first kept; the label cache and the index of the set hold each key once; `retrieve index` takes
  the tar itself and `retrieve query --json` shows each hit's url;
- a 30000 x 30000 JPEG (a decompression bomb) and a 12000 x 12000 one in a shard set: skipped
  and counted by `data check` (memory capped), `label`, `retrieve index` and `pretrain`;
- a model directory whose config.json says embed_dim 10^7, 10^6 layers, or sizes that do not
  fit its weights: refused before anything is allocated, naming the field and both values;
- a YAML alias bomb inside a typed recipe value: refused at once, the message short;
- `evilm push` without a network: one paragraph, the token never printed.

Model commands go through the fork server of conftest.py; the memory cases through the console
script with RLIMIT_AS (tests/helpers/hostile.py, `run_capped`), which also reports peak RSS.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.cli.test_distributed_resume import tiny_pretrain
from tests.faults.commands import run
from tests.helpers.cli import REPO, run_evilm
from tests.helpers.hostile import bomb_jpeg, clip_members, replace_frames, run_capped, write_tar

GiB, MiB = 1 << 30, 1 << 20


def clean(proc) -> str:
    """stderr of a run that must hold no traceback."""
    err = proc["stderr"] if isinstance(proc, dict) else proc.stderr
    assert "Traceback" not in err, err[-3000:]
    return " ".join(err.split())


def videos(synth: Path, n: int) -> list[bytes]:
    return [p.read_bytes() for p in sorted((synth / "videos").glob("*.mp4"))[:n]]


def files_under(path: Path) -> set[str]:
    return {p.relative_to(path).as_posix() for p in path.rglob("*")}


@pytest.fixture
def evilm(evilm_server, tmp_path):
    return lambda *args: run(evilm_server, *args, cwd=tmp_path)


def test_a_50_gb_member_is_skipped_unread_and_a_big_one_is_streamed(synth_dir, tmp_path):
    v = videos(synth_dir, 3)
    write_tar(tmp_path / "in" / "00000.tar", [
        *clip_members("000000000", v[0], "first"), *clip_members("000000001", 50 * GiB, "fifty gigabytes"),
        *clip_members("000000002", (v[1], 256 * MiB), "an mp4 and 256 MiB after it"),
        *clip_members("000000003", v[2], "after")])
    assert (tmp_path / "in" / "00000.tar").stat().st_blocks * 512 < 10 * MiB  # the 50 GB are a hole
    (tmp_path / "tmp").mkdir()
    env = {"TMPDIR": str(tmp_path / "tmp")}
    shards = run_capped("data", "shards", tmp_path / "in", "--out", tmp_path / "out", "--size", "64",
                        "--candidates", "4", "--workers", "1", "--json", cwd=tmp_path, memory=GiB, env=env)
    assert shards["rc"] == 0, shards["stderr"][-3000:]
    clean(shards)
    summary = json.loads(shards["stdout"].splitlines()[-1])
    assert (summary["clips"], summary["written"], summary["skipped"]) == (4, 3, 1)
    [row] = [line.split("\t") for line in (tmp_path / "out" / "skipped.tsv").read_text().splitlines()]
    assert row[1:3] == ["00000.tar/000000001.mp4", "corrupt"] and "too large: 50.0 GiB" in row[3]
    assert shards["peak_rss"] < 256 * MiB, shards["peak_rss"]  # the 256 MiB member was never held in memory
    # nothing outside --out (the spooled copy went there, as a temporary), and no temporary left in it
    assert sorted(os.listdir(tmp_path)) == ["in", "out", "tmp"] and os.listdir(tmp_path / "in") == ["00000.tar"]
    assert not any((tmp_path / "tmp").iterdir())
    assert not [p for p in files_under(tmp_path / "out") if Path(p).name.startswith(".")]
    check = run_capped("data", "check", tmp_path / "in", "--image-size", "64", "--workers", "1", "--json",
                       cwd=tmp_path, memory=GiB, env=env)
    assert check["rc"] == 0, check["stderr"][-3000:]
    clean(check)
    report = json.loads(check["stdout"].splitlines()[-1])
    assert (report["ok"], report["corrupt"]) == (3, 1) and "too large" in report["problems"][0]["detail"]
    assert check["peak_rss"] < GiB and not any((tmp_path / "tmp").iterdir())
    print(f"peak RSS: data shards {shards['peak_rss'] / MiB:.0f} MiB, data check {check['peak_rss'] / MiB:.0f} MiB")


@pytest.fixture(scope="module")
def duplicates(synth_dir, tmp_path_factory) -> Path:
    """A tar with key a twice in a row and once more later: a, a, b, a, c."""
    v = videos(synth_dir, 5)
    return write_tar(tmp_path_factory.mktemp("dup") / "00000.tar", [
        *clip_members("a", v[0], "first a"), *clip_members("a", v[1], "a again at once"),
        *clip_members("b", v[2], "b"), *clip_members("a", v[3], "a again later"), *clip_members("c", v[4], "c")])


def test_duplicate_keys_are_listed_and_never_held_twice(duplicates, commands, tokenizer_dir, tmp_path, evilm):
    out = tmp_path / "shards"
    proc = run_evilm("data", "shards", duplicates, "--out", out, "--size", "64", "--workers", "1", check=False)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("\t") for line in (out / "skipped.tsv").read_text().splitlines()]
    assert [(r[1], r[2]) for r in rows] == [("00000.tar/a.mp4", "duplicate")] * 2
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [(r["video"], r["caption"]) for r in records] == [
        ("00000.tar/a.mp4", "first a"), ("00000.tar/b.mp4", "b"), ("00000.tar/c.mp4", "c")]
    assert records[0]["meta"] == {"key": "a", "status": "success", "url": "https://example.org/a.mp4"}
    report = json.loads(run_evilm("data", "check", duplicates, "--image-size", "64", "--workers", "1",
                                  "--json").stdout.splitlines()[-1])
    assert (report["ok"], report["duplicate"]) == (3, 2)
    model = Path(commands["retrieve index"].args(tmp_path)[3])  # the fault suite's tiny retrieval model
    label = evilm("label", "--manifest", out, "--tokenizer", tokenizer_dir, "--out", tmp_path / "labels",
                  "--workers", "0", "--json")
    assert label.returncode == 0, label.stderr
    keys = (tmp_path / "labels" / "keys.txt").read_text().splitlines()
    assert sorted(keys) == ["00000.tar/a.mp4", "00000.tar/b.mp4", "00000.tar/c.mp4"]
    for name, source in (("set", out), ("tar", duplicates)):  # the shard set, and the tar itself
        index = evilm("retrieve", "index", "--checkpoint", model, "--manifest", source, "--out", tmp_path / name,
                      "--workers", "0", "--json")
        assert index.returncode == 0, index.stderr
        summary = json.loads(index.stdout.splitlines()[-1])
        assert (summary["total"], summary["embedded"], summary["skipped_total"]) == (3, 3, 2)
        assert sorted((tmp_path / name / "keys.txt").read_text().splitlines()) == keys
    hits = evilm("retrieve", "query", "--index", tmp_path / "tar", "-k", "3", "--json", "a clip")
    assert hits.returncode == 0, hits.stderr
    metas = {json.loads(line)["key"]: json.loads(line)["meta"]["url"] for line in hits.stdout.splitlines()}
    assert metas == {f"00000.tar/{k}.mp4": f"https://example.org/{k}.mp4" for k in "abc"}


def test_decompression_bombs_in_a_shard_set_are_counted_skips(synth_dir, commands, tokenizer_dir, tmp_path, evilm):
    shards = tmp_path / "shards"
    run_evilm("data", "shards", synth_dir / "train.jsonl", "--out", shards, "--size", "64", "--workers", "1",
              "--samples-per-shard", "10")
    replace_frames(shards, "000000_000001", bomb_jpeg(30000, 30000))  # every frame: training picks any of them
    replace_frames(shards, "000000_000003", bomb_jpeg(12000, 12000))
    check = run_capped("data", "check", shards, "--workers", "1", "--json", cwd=tmp_path, memory=GiB)
    assert check["rc"] == 0 and check["peak_rss"] < GiB, check["stderr"][-3000:]
    clean(check)
    details = [p["detail"] for p in json.loads(check["stdout"].splitlines()[-1])["problems"]]
    assert len(details) == 2 and "decompression bomb" in details[0] and "12000x12000 (its JPEG header)" in details[1]
    label = evilm("label", "--manifest", shards, "--tokenizer", tokenizer_dir, "--out", tmp_path / "labels",
                  "--workers", "0", "--json")
    assert label.returncode == 0 and json.loads(label.stdout.splitlines()[-1])["corrupt"] == 2, label.stderr
    model = Path(commands["retrieve index"].args(tmp_path)[3])
    index = evilm("retrieve", "index", "--checkpoint", model, "--manifest", shards, "--out", tmp_path / "index",
                  "--workers", "0", "--json")
    assert index.returncode == 0 and json.loads(index.stdout.splitlines()[-1])["skipped"] == 2, index.stderr
    pretrain = evilm("pretrain", REPO / "recipes/synthetic/pretrain.yaml", *tiny_pretrain(
        synth_dir, ("null", "null"), tmp_path / "run", **{"data.train": shards, "data.val": "null", "loss.mvm": 0,
                                                           "train.epochs": 1}))
    assert pretrain.returncode == 0, pretrain.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped"] == 2 and "decompression bomb" in pretrain.stderr
    for proc in (label, index, pretrain):
        clean(proc)
    print(f"peak RSS: data check over the bombs {check['peak_rss'] / MiB:.0f} MiB")


def hub_model(tmp_path: Path, commands) -> Path:
    """The fault suite's tiny retrieval model, saved in the Hub layout (config.json)."""
    from evilm_core.models.evilm import EViLM

    return EViLM.from_pretrained(Path(commands["retrieve index"].args(tmp_path)[3])).save_pretrained(
        tmp_path / "hub")


@pytest.mark.parametrize("change,expected", [
    ({"embed_dim": 10**7}, "model.embed_dim is 10000000; this evilm builds models with embed_dim from 1 to 65536"),
    ({"text_layers": 10**6}, "model.text_layers is 1000000; this evilm builds models with text_layers from 1 to"),
    ({"fusion_dim": 4096}, "model.fusion_dim is 4096 but"),
    ({"text_intermediate": 60000}, "text.bert.encoder.layer.0.intermediate.dense.weight: [60000, 128] by the config"),
], ids=["embed-1e7", "layers-1e6", "fusion-other", "intermediate-other"])
def test_absurd_model_directories_are_refused_before_allocation(change, expected, synth_dir, commands, tmp_path,
                                                                evilm):
    from evilm_core.errors import EvilmError
    from evilm_core.models.evilm import EViLM

    model = hub_model(tmp_path, commands)
    config = json.loads((model / "config.json").read_text())
    config["model"].update(change)
    (model / "config.json").write_text(json.dumps(config))
    args = ("retrieve", "index", "--checkpoint", model, "--manifest", synth_dir / "test.jsonl", "--out",
            tmp_path / "index", "--workers", "0")
    if "embed_dim" in change:  # the memory case: the console script, address space capped at 6 GiB (torch maps ~3.3)
        proc = run_capped(*args, cwd=tmp_path, memory=6 * GiB)
        print(f"peak RSS: retrieve index with embed_dim 10^7 {proc['peak_rss'] / MiB:.0f} MiB")
    else:
        proc = evilm(*args)
    rc = proc["rc"] if isinstance(proc, dict) else proc.returncode
    assert rc == 2 and expected in clean(proc), clean(proc)[-3000:]
    assert str(model / "config.json") in clean(proc) and not (tmp_path / "index").exists()
    with pytest.raises(EvilmError) as refused:  # the Python API: the same refusal, before any allocation
        EViLM.from_pretrained(model)
    assert expected in str(refused.value)


def test_a_yaml_alias_bomb_in_a_typed_value_is_refused_at_once(tmp_path):
    text = "kind: pretrain\ndata:\n  train: [&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"
    text += "".join(f", &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)) + "]\n"
    (tmp_path / "bomb.yaml").write_text(text)
    bomb = run_capped("validate", tmp_path / "bomb.yaml", cwd=tmp_path, memory=6 * GiB)
    err = clean(bomb)
    assert bomb["rc"] == 2 and "more than 100000 values once its YAML aliases" in err and len(err) < 400, err
    small = "kind: pretrain\ndata:\n  train: [&b0 [lol, lol, lol]" + "".join(
        f", &b{i} [" + ", ".join([f"*b{i - 1}"] * 3) + "]" for i in range(1, 6)) + "]\n"  # typed wrong, not a bomb
    (tmp_path / "small.yaml").write_text(small)
    proc = run_capped("validate", tmp_path / "small.yaml", cwd=tmp_path)
    assert proc["rc"] == 2 and "expected str | null" in clean(proc) and len(clean(proc)) < 500
    print(f"peak RSS: validate over the bomb {bomb['peak_rss'] / MiB:.0f} MiB")


def test_push_without_a_network_is_one_paragraph_without_the_token(commands, tmp_path):
    model = hub_model(tmp_path, commands)
    token = "hf_" + "s3cr3t" * 6
    proc = run_evilm("push", model, "me/tiny", check=False, env={
        "HF_TOKEN": token, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "0"})
    err = clean(proc)
    assert proc.returncode == 2 and "pushing to me/tiny failed, the Hub could not be reached" in err, proc.stderr
    assert err.count("error:") == 1 and token not in proc.stderr + proc.stdout


def test_the_held_cases_still_hold(tmp_path):
    """Names that would escape (absolute, ..), links, devices and fifos inside a tar: never
    extracted, so they are passed over or kept as names; nothing appears outside --out. A member
    that is not a video is named in the message (it read '<none>')."""
    import tarfile

    path = tmp_path / "in" / "00000.tar"
    path.parent.mkdir()
    with tarfile.open(path, "w") as tar:
        for name, kind in (("/etc/evil.mp4", tarfile.REGTYPE), ("../../escape.mp4", tarfile.REGTYPE),
                           ("link.mp4", tarfile.SYMTYPE), ("hard.mp4", tarfile.LNKTYPE), ("dev.mp4", tarfile.CHRTYPE),
                           ("fifo.mp4", tarfile.FIFOTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "/etc/shadow" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
        junk = tarfile.TarInfo("junk.mp4")
        junk.size = 1000
        tar.addfile(junk, io.BytesIO(b"not a video " * 84))
    before = set(os.listdir(tmp_path))
    proc = run_evilm("data", "shards", path, "--out", tmp_path / "out", "--size", "64", "--workers", "1", "--json",
                     "--decoder", "pyav", check=False)
    assert proc.returncode == 0, proc.stderr
    clean(proc)
    skipped = (tmp_path / "out" / "skipped.tsv").read_text()
    assert "/etc/evil.mp4" in skipped and "../../escape.mp4" in skipped and "link.mp4" not in skipped
    assert "00000.tar/junk.mp4\tcorrupt\tInvalid data found when processing input\n" in skipped
    assert "<none>" not in skipped
    assert set(os.listdir(tmp_path)) == before | {"out"} and not Path("/etc/evil.mp4").exists()
    shutil.rmtree(tmp_path / "out")
