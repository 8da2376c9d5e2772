"""`evilm data shards`: plan the output shards, write the unfinished ones over worker processes,
and merge the parts into the shard set's index (docs/data.md, "Shards").

Resumable and shardable like `evilm label`: OUT/parts/plan.json fixes the input and settings
(a re-run with others is refused, naming what differs); a shard is finished when its part file
exists and matches its tar, so a killed run redoes only the unfinished shards; `--shard i/n`
writes the shards j with j % n == i (one process per node), and the run that finds every shard
finished, or `--merge`, writes samples.i64, the record table, skipped.tsv and index.json.
The output is a function of the input and the settings only: byte-identical however it was
interrupted, sharded or parallelised.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np

from evilm_core.data.records.record import ClipRecord
from evilm_core.data.records.table import write_record_table
from evilm_core.data.shards.layout import FORMAT, INDEX, PARTS, SAMPLES, SKIPPED, VERSION, shard_name
from evilm_core.data.shards.sources import ShardJob, count_clips, plan_jobs
from evilm_core.data.shards.writer import ShardSettings, read_part, write_shard
from evilm_core.data.video.read import MAX_VIDEO_BYTES, check_decoder_name, resolve_decoder, unavailable
from evilm_core.data.work_split import WorkSplit
from evilm_core.errors import EvilmError
from evilm_core.fs import atomic_path, atomic_write_text, clean_stale_temps, disk_errors, escape_key
from evilm_core.progress import Progress
from evilm_core.workers import run_jobs

log = logging.getLogger("evilm.prepare")
PLAN = "plan.json"


@dataclass
class ShardRequest:
    input: str | None  # manifest, directory of tars, brace pattern or one tar (None with merge)
    out: str  # the shard directory
    format: str = "auto"  # manifest format
    root: str | None = None  # where a manifest's relative video paths resolve
    settings: ShardSettings = ShardSettings()  # frames per clip, size, JPEG quality
    samples_per_shard: int = 1000  # videos per output shard (manifest input)
    workers: int = 1  # encoder processes
    shard: str | WorkSplit | None = None  # --shard i/n: write the shards j with j % n == i
    merge: bool = False  # only merge the finished parts into the index


def _check_plan(out: Path, plan: dict) -> None:
    """Write OUT/parts/plan.json, or check that the one there describes the same job."""
    path = out / PARTS / PLAN
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        old.get("settings", {}).setdefault("max_video_bytes", MAX_VIDEO_BYTES)  # plans written before the limit
        diffs = [f"{k}: {old.get(k)!r} there, {plan[k]!r} now" for k in ("settings", "input", "shards", "samples_per_shard")
                 if old.get(k) != plan[k]]
        if diffs:
            raise EvilmError(f"{out} holds shards of another input or settings ({'; '.join(diffs)}); use a new "
                             "--out, or the same arguments to resume" + _decoder_hint(old, plan))
        return
    atomic_write_text(path, json.dumps(plan, indent=2, sort_keys=True) + "\n")


def _decoder_hint(old: dict, plan: dict) -> str:
    """A shard set is decoded by one backend (its bytes depend on it): say how to resume with it."""
    was, now = old.get("settings", {}).get("decoder"), plan["settings"]["decoder"]
    if was == now or was is None:
        return ""
    hint = f" (the shards were decoded with {was}, this run would decode with {now}: add `--decoder {was}`"
    return hint + ("" if unavailable(was) is None else f", after installing {was} here") + ")"


def _read_plan(out: Path) -> dict:
    path = out / PARTS / PLAN
    if not path.is_file():
        raise EvilmError(f"{out}: no {PARTS}/{PLAN}, so nothing to merge; run `evilm data shards INPUT --out {out}`")
    return json.loads(path.read_text(encoding="utf-8"))


def build_shards(req: ShardRequest, progress: Progress | None = None) -> dict:
    """Write this run's unfinished shards and, when every shard is finished, the index.
    Returns {out, clips, written, skipped, shards, done, complete, seconds, ...}."""
    start, out = time.perf_counter(), Path(req.out)
    if req.merge:
        return {**merge_shards(out), "seconds": round(time.perf_counter() - start, 3)}
    if req.input is None:
        raise EvilmError("give INPUT (a manifest or WebDataset tars), or --merge")
    split = WorkSplit.parse(req.shard)
    settings = replace(req.settings, decoder=resolve_decoder(req.settings.decoder, "--decoder"))  # once per run
    jobs, source = plan_jobs(req.input, req.format, req.root, req.samples_per_shard)
    out.mkdir(parents=True, exist_ok=True)
    for debris in (out, out / PARTS):
        clean_stale_temps(debris)
    plan = {"format": FORMAT, "version": VERSION, "settings": settings.to_json(), "input": source,
            "shards": len(jobs), "samples_per_shard": req.samples_per_shard}
    _check_plan(out, plan)
    mine = split.take(jobs) if split else jobs
    todo = [j for j in mine if read_part(out, j.index) is None]
    log.info("shards: %d in %s, this run owns %d, %d to write (%s workers)", len(jobs), out, len(mine), len(todo),
             req.workers)
    log.info("shards: decoding with %s", settings.decoder)
    written = _run_jobs(todo, out, settings, req.workers, count_clips(todo), progress)
    finished = [j.index for j in jobs if read_part(out, j.index) is not None]
    result = {"out": str(out), "shards": len(jobs), "done": len(finished), "complete": len(finished) == len(jobs),
              "written_this_run": written}
    if result["complete"]:
        result.update(merge_shards(out))
    else:
        log.info("shards: %d of %d finished; merge with `evilm data shards --merge --out %s` when all runs end",
                 len(finished), len(jobs), out)
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result


def _run_jobs(todo: list[ShardJob], out: Path, settings: ShardSettings, workers: int, clips: int | None,
              progress: Progress | None) -> int:
    """Write the shards of `todo` (in parallel when workers > 1); returns the samples written."""
    done = written = 0
    total = clips if clips is not None else len(todo)
    tic = time.perf_counter()

    def report(result: dict) -> None:
        nonlocal done, written
        done += result["clips"] if clips is not None else 1
        written += result["written"]
        for key, video, reason, detail in result["skipped"]:
            log.warning("skipped %s: %s (%s)", video, reason, detail)
        if progress:
            progress(done, total, clips_per_s=done / max(1e-9, time.perf_counter() - tic))

    # every shard is written in a worker process, even with one worker: a decoder that crashes costs
    # its clip, not the run (evilm_core/workers.py); spawned (decord and forked state do not mix)
    for result in run_jobs(partial(write_shard, out=str(out), settings=settings), todo, workers):
        report(result)
    for debris in (out, out / PARTS):  # what a worker that died left (its tar, a spooled member)
        clean_stale_temps(debris)
    return written


def merge_shards(out: Path) -> dict:
    """Fold the finished parts into samples.i64, the record table, skipped.tsv and index.json
    (written last: its presence means the set is complete)."""
    plan = _read_plan(out)
    parts = [read_part(out, j) for j in range(plan["shards"])]
    missing = [shard_name(j) for j, p in enumerate(parts) if p is None]
    if missing:
        raise EvilmError(f"{out}: {len(missing)} of {plan['shards']} shards are unfinished (e.g. {missing[0]}); run "
                         "the remaining `evilm data shards ... --shard i/n` commands first")
    table, rows, skipped, shards = [], [], [], []
    for part in parts:
        for s in part["samples"]:
            rows += [(ClipRecord(**r), len(table)) for r in s["records"]]
            table.append((part["shard"], s["offset"], s["length"]))
        skipped += part["skipped"]
        shards.append({"name": part["name"], "samples": len(part["samples"]), "clips": part["clips"],
                       "bytes": part["bytes"]})
    with disk_errors(out), atomic_path(out / SAMPLES) as tmp:
        np.asarray(table, dtype="<i8").reshape(-1, 3).tofile(tmp)
    write_record_table(rows, out)
    atomic_write_text(out / SKIPPED, "".join("\t".join(escape_key(str(v)) for v in row) + "\n" for row in skipped))
    totals = {"clips": sum(s["clips"] for s in shards), "written": len(table), "records": len(rows),
              "skipped": len(skipped)}
    index = {"format": FORMAT, "version": VERSION, "complete": True, "settings": plan["settings"],
             "input": plan["input"], "shards": shards, "samples": len(table), **totals}
    atomic_write_text(out / INDEX, json.dumps(index, indent=2, sort_keys=True) + "\n")
    log.info("shards: %s holds %d samples (%d records) in %d shards; %d clips skipped (see %s)", out, len(table),
             len(rows), len(shards), len(skipped), out / SKIPPED)
    return {"out": str(out), **totals, "shards": len(shards), "complete": True, "index": str(out / INDEX)}


def settings_of(candidates: int, size: int, quality: int, decoder: str = "auto",
                max_video_bytes: int = MAX_VIDEO_BYTES) -> ShardSettings:
    """Checked settings (CLI values)."""
    if candidates < 1 or size < 16 or not 1 <= quality <= 100 or max_video_bytes < 1:
        raise EvilmError(f"--candidates must be >= 1, --size >= 16, --quality 1-100 and --max-video-bytes >= 1 (got "
                         f"{candidates}, {size}, {quality}, {max_video_bytes})")
    return ShardSettings(candidates=candidates, size=size, quality=quality,
                         decoder=check_decoder_name(decoder, "--decoder"), max_video_bytes=max_video_bytes)

