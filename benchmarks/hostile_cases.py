"""Issue 29's failed cases re-run as a user meets them, through the `evilm` console script: for each,
the command, its exit code, the first line of what it says (the error, or the skip it counted),
its peak RSS (the command and its workers; memory capped with RLIMIT_AS where memory was the
failure) and whether anything was written outside --out. Prints a Markdown table
(docs/reliability.md, "Hostile inputs, re-run").

    OMP_NUM_THREADS=1 python benchmarks/hostile_cases.py      # about 1 minute on 2 cores

The inputs are made in seconds (tests/helpers/hostile.py): a tar whose member claims 50 GB is a
sparse file, the JPEG bombs are headers. Worker deaths (case 7) and diverged runs (case 8) are
shown by tests/faults/test_workers.py and test_nonfinite_results.py, which need a fork server
and a SIGKILL timed to a running command.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.hostile import bomb_jpeg, clip_members, replace_frames, run_capped, write_tar  # noqa: E402

GiB, MiB = 1 << 30, 1 << 20


def first_line(proc: dict) -> str:
    """What the user reads first: the error paragraph, else the first skip warning, else the summary."""
    lines = [re.sub(r"^\d\d:\d\d:\d\d ", "", line) for line in proc["stderr"].splitlines() if line.strip()]
    text = next((line for line in lines if line.startswith("error")), None) or next(
        (line for line in lines if line.startswith("WARNING")), None) or next(
        (line for line in reversed(proc["stdout"].splitlines()) if line.strip() and not line.startswith("{")),
        "(the --json summary only)")
    if "Traceback" in proc["stderr"]:
        text = "TRACEBACK: " + text
    return " ".join(text.split())[:160]


def case(rows: list, name: str, work: Path, args: list, memory: int = 0, note: str = "", env: dict | None = None):
    """Run `evilm args` in `work`; anything new in `work` but not under an --out counts as outside."""
    before = set(os.listdir(work))
    outs = {Path(str(args[i + 1])).name for i, a in enumerate(args[:-1]) if a == "--out"}
    proc = run_capped(*args, cwd=work, memory=memory, env=env)
    outside = sorted(set(os.listdir(work)) - before - outs)
    shown = " ".join(str(a).replace(str(work) + "/", "") for a in args)
    rows.append((name, f"`evilm {shown}`", proc["rc"], first_line(proc), f"{proc['peak_rss'] / MiB:.0f} MiB",
                 "yes: " + ", ".join(outside) if outside else "no", note))
    return proc


def last_json(proc: dict) -> dict:
    return json.loads(proc["stdout"].strip().splitlines()[-1])


def inputs(work: Path) -> dict[str, Path]:
    """The synthetic clips, a tiny tokenizer and a tiny retrieval model (the tests' own)."""
    from evilm_core.prepare.synth import generate
    from tests.helpers.label import make_tokenizer
    from tests.retrieval.test_retrieve_cli import write_model

    synth = work / "synth"
    generate(synth, num_videos=12, seed=0, frames=8, size=64, workers=1)
    return {"synth": synth, "tok": make_tokenizer(work / "tok", codebook_size=16),
            "model": write_model(work / "model", synth, seed=0)}


def tars(work: Path, synth: Path) -> tuple[Path, Path, Path]:
    v = [p.read_bytes() for p in sorted((synth / "videos").glob("*.mp4"))[:5]]
    big = write_tar(work / "big" / "00000.tar", [
        *clip_members("000000000", v[0], "first"), *clip_members("000000001", 50 * GiB, "fifty gigabytes"),
        *clip_members("000000002", (v[1], 256 * MiB), "an mp4 and 256 MiB after it")])
    dup = write_tar(work / "dup" / "00000.tar", [
        *clip_members("a", v[0], "first a"), *clip_members("a", v[1], "a again at once"),
        *clip_members("b", v[2], "b"), *clip_members("a", v[3], "a again later"), *clip_members("c", v[4], "c")])
    junk = write_tar(work / "junk" / "00000.tar", [*clip_members("junk", b"not a video " * 84, "junk")])
    return big, dup, junk


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="hostile-"))
    made = inputs(work)
    big, dup, junk = tars(work, made["synth"])
    env = {"TMPDIR": str(work / "tmp")}
    (work / "tmp").mkdir()
    rows: list = []
    # 1. a 50 GB member (and a 256 MiB one): skipped unread / decoded from a copy in --out
    case(rows, "1 50 GB member", work, ["data", "shards", big.parent, "--out", work / "s-big", "--size", "64",
                                        "--workers", "1"], memory=GiB, env=env)
    p = case(rows, "1 50 GB member", work, ["data", "check", big.parent, "--image-size", "64", "--workers", "1",
                                            "--json"], memory=GiB, env=env)
    rows[-1] = (*rows[-1][:-1], f"corrupt {last_json(p)['corrupt']}: {last_json(p)['problems'][0]['detail'][:70]}")
    # 2. duplicate keys; 9. the tar as --manifest, skipped_total, provenance
    case(rows, "2 duplicate keys", work, ["data", "shards", dup.parent, "--out", work / "s-dup", "--size", "64",
                                          "--workers", "1"])
    rows[-1] = (*rows[-1][:-1], "skipped.tsv: " + ", ".join(
        line.split("\t")[2] for line in (work / "s-dup" / "skipped.tsv").read_text().splitlines()))
    case(rows, "2 duplicate keys", work, ["label", "--manifest", work / "s-dup", "--tokenizer", made["tok"],
                                          "--out", work / "l-dup", "--workers", "0"])
    keys = (work / "l-dup" / "keys.txt").read_text().splitlines()
    rows[-1] = (*rows[-1][:-1], f"keys.txt: {len(keys)} keys, {len(set(keys))} distinct")
    p = case(rows, "9 tar as --manifest", work, ["retrieve", "index", "--checkpoint", made["model"], "--manifest",
                                                 dup, "--out", work / "i-dup", "--workers", "0", "--json"])
    s = last_json(p)
    rows[-1] = (*rows[-1][:-1], f"total {s['total']}, embedded {s['embedded']}, skipped_total {s['skipped_total']}")
    p = case(rows, "9 provenance, long query", work, ["retrieve", "query", "--index", work / "i-dup", "-k", "3",
                                                      "--json", "x" * 100_000])
    lines = p["stdout"].splitlines()
    rows[-1] = (*rows[-1][:-1], f"{len(lines)} lines, longest {max(map(len, lines))} chars, url "
                f"{json.loads(lines[0])['meta']['url']}")
    case(rows, "9 member name", work, ["data", "shards", junk.parent, "--out", work / "s-junk", "--size", "64",
                                       "--workers", "1", "--decoder", "pyav"])
    rows[-1] = (*rows[-1][:-1], (work / "s-junk" / "skipped.tsv").read_text().strip().replace("\t", " | ")[:90])
    # 3. decompression bombs in a shard set
    shards = work / "s-bomb"
    run_capped("data", "shards", made["synth"] / "train.jsonl", "--out", shards, "--size", "64", "--workers", "1",
               cwd=work)
    replace_frames(shards, "000000_000001", bomb_jpeg(30000, 30000))
    replace_frames(shards, "000000_000003", bomb_jpeg(12000, 12000))
    p = case(rows, "3 JPEG bombs", work, ["data", "check", shards, "--workers", "1", "--json"], memory=GiB)
    rows[-1] = (*rows[-1][:-1], "; ".join(x["detail"][:60] for x in last_json(p)["problems"]))
    p = case(rows, "3 JPEG bombs", work, ["label", "--manifest", shards, "--tokenizer", made["tok"], "--out",
                                          work / "l-bomb", "--workers", "0", "--json"], memory=GiB * 4)
    rows[-1] = (*rows[-1][:-1], f"corrupt {last_json(p)['corrupt']}")
    p = case(rows, "3 JPEG bombs", work, ["retrieve", "index", "--checkpoint", made["model"], "--manifest", shards,
                                          "--out", work / "i-bomb", "--workers", "0", "--json"], memory=GiB * 4)
    rows[-1] = (*rows[-1][:-1], f"skipped {last_json(p)['skipped']}")
    # 4. absurd model directories
    from evilm_core.models.evilm import EViLM
    clean_hub = EViLM.from_pretrained(made["model"]).save_pretrained(work / "hub")
    for field, value in (("embed_dim", 10**7), ("text_layers", 10**6)):
        hub = work / f"hub-{field}"
        EViLM.from_pretrained(made["model"]).save_pretrained(hub)
        config = json.loads((hub / "config.json").read_text())
        config["model"][field] = value
        (hub / "config.json").write_text(json.dumps(config))
        case(rows, f"4 config.json {field}", work, ["retrieve", "index", "--checkpoint", hub, "--manifest",
                                                    made["synth"] / "test.jsonl", "--out", work / f"i-{field}",
                                                    "--workers", "0"], memory=6 * GiB)
    # 5. a YAML alias bomb in a typed value
    text = "kind: pretrain\ndata:\n  train: [&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"
    text += "".join(f", &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)) + "]\n"
    (work / "bomb.yaml").write_text(text)
    case(rows, "5 YAML alias bomb", work, ["validate", work / "bomb.yaml"], memory=6 * GiB)
    # 6. push without a network
    token = "hf_" + "s3cr3t" * 6
    p = case(rows, "6 push, no network", work, ["push", clean_hub, "me/tiny"], env={
        "HF_TOKEN": token, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(work / "hf"), "HF_HUB_OFFLINE": "0"})
    rows[-1] = (*rows[-1][:-1], f"token printed: {token in p['stdout'] + p['stderr']}")
    print("| case | command | exit | first line | peak RSS | written outside --out | counted |")
    print("|---|---|---|---|---|---|---|")
    for name, cmd, rc, line, peak, outside, note in rows:
        cmd = cmd if len(cmd) < 90 else cmd[:87] + "...`"
        print(f"| {name} | {cmd} | {rc} | {line.replace('|', '/')} | {peak} | {outside} | {note.replace('|', '/')} |")
    print(f"\n(work directory {work}; leftover temporaries in TMPDIR: {len(os.listdir(work / 'tmp'))})")


if __name__ == "__main__":
    main()
