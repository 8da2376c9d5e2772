"""Training-data loading on the CPU: decoding the mp4 in the loop vs reading `evilm data shards`
(issue 16), and the memory of records at WebVid scale.

    python benchmarks/loading.py --out runs/loading.json            # ~10 min on 2 shared cores
    python benchmarks/loading.py --quick --out runs/loading-quick.json  # ~1 min smoke run

One thread throughout (OMP_NUM_THREADS=1, torch.set_num_threads(1), decord's one thread, the
shard build with --workers 1). It measures:

1. clips: WebVid-like 596x336, 15 s, 25 fps H.264 yuv420p clips made with PyAV, keyframe every
   250 and every 25 frames (checked by decoding with PyAV), plus up to 3 real mp4 files found on
   the machine (`find /`, pytest fixtures skipped);
2. per training sample (T=4 frames, 256 px, train mode): CPU ms (`time.process_time`) and wall ms
   of `clip_dataset(...)[i]` with SegmentFrames (decord decodes the mp4) vs the shard picker,
   interleaved A, B, A, B over clips and repetitions; medians and their ratio;
3. shard building (`build_shards`, workers=1): clips per CPU second, builds interleaved;
4. JPEG cost: stored frames vs the same candidate frames decoded from the mp4 (MAE, PSNR, bytes)
   at quality 95, 90 and 85;
5. memory: a synthetic N-record table (`write_record_table`), then in a fresh process per case
   the main process and two spawned persistent DataLoader workers that hold (a) nothing, (b) the
   RecordTable, (c) a list[ClipRecord] (the old way, pickled to the workers), after 10,000 random
   reads and after touching every record; VmRSS, PSS, USS, anonymous memory.

Prints the markdown tables (stderr) and the results as one JSON line (stdout, and --out).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import argparse  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import _loading_clips as lc  # noqa: E402  (benchmarks/ is sys.path[0] when run as a script)
from evilm_core.data.dataset import clip_dataset  # noqa: E402
from evilm_core.data.clips import open_clips  # noqa: E402
from evilm_core.data.records.manifest import resolve_video  # noqa: E402
from evilm_core.data.records.record import ClipRecord  # noqa: E402
from evilm_core.data.records.table import INDEX, TEXT, RecordTable, write_record_table  # noqa: E402
from evilm_core.prepare.shards import ShardRequest, build_shards, settings_of  # noqa: E402
from evilm_core.data.shards.layout import ShardSet, frame_member  # noqa: E402
from evilm_core.data.video.read import read_frames, segment_indices  # noqa: E402

T, SIZE, CANDIDATES = 4, 256, 8
med = statistics.median


def timed(fn):
    """(fn(), CPU ms, wall ms)."""
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn()
    return out, (time.process_time() - cpu) * 1e3, (time.perf_counter() - wall) * 1e3


def make_inputs(work: Path, clips: int, real: bool) -> tuple[dict[str, Path], dict]:
    """{variant: manifest} and the description of every clip (size, keyframe interval)."""
    variants, described = {}, {}
    for name, gop, seed in (("gop250", 250, 0), ("gop25", 25, 0)):
        variants[name], described[name] = lc.make_clip_set(work / name, gop, clips, seed)
    found, rejected = lc.find_real_clips(3, work) if real else ([], ["search skipped (--no-real)"])
    described["real_search"] = {"used": found, "rejected": rejected}
    if found:
        (work / "real").mkdir(exist_ok=True)
        lines = [json.dumps({"video": str(Path(p).absolute()), "caption": "a real clip"}) for p in found]
        (work / "real" / "manifest.jsonl").write_text("\n".join(lines) + "\n")
        variants["real"], described["real"] = work / "real" / "manifest.jsonl", [lc.describe(p) for p in found]
    return variants, described


def build(manifest: Path, out: Path, quality: int = 95) -> dict:
    req = ShardRequest(input=str(manifest), out=str(out), settings=settings_of(CANDIDATES, SIZE, quality), workers=1)
    summary, cpu, wall = timed(lambda: build_shards(req))
    assert summary["complete"] and not summary["skipped"], summary
    return {"out": str(out), "clips": summary["clips"], "cpu_s": cpu / 1e3, "wall_s": wall / 1e3}


def time_builds(variants: dict[str, Path], work: Path, reps: int) -> tuple[dict, dict[str, str]]:
    """Builds interleaved (variant A, B, A, B ...); returns (clips/s per variant, rep 0's shard dirs)."""
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for r in range(reps):
        for name, manifest in variants.items():
            runs[name].append(build(manifest, work / "shards" / f"{name}-q95-{r}"))
    out = {}
    for name, rs in runs.items():
        clips = rs[0]["clips"]
        out[name] = {"clips": clips, "builds": len(rs), "cpu_s": round(med(r["cpu_s"] for r in rs), 3),
                     "wall_s": round(med(r["wall_s"] for r in rs), 3),
                     "clips_per_cpu_s": round(clips / med(r["cpu_s"] for r in rs), 2),
                     "clips_per_wall_s": round(clips / med(r["wall_s"] for r in rs), 2)}
    return out, {name: rs[0]["out"] for name, rs in runs.items()}


def _datasets(manifest: Path, shard_dir: str):
    mp4, shards = open_clips(manifest), open_clips(shard_dir)
    a = clip_dataset(mp4.records, mp4.root, T, SIZE, train=True, frames=mp4.frames(T, SIZE))
    b = clip_dataset(shards.records, shards.root, T, SIZE, train=True, frames=shards.frames(T, SIZE))
    assert [r.video for r in a.records] == [r.video for r in b.records]
    return a, b, shards.shards


def read_t_frames(shards: ShardSet, sample: int) -> list:
    """What reading only the T frames a sample uses would cost (ShardSet.read decodes all F)."""
    from PIL import Image

    members = shards.read_members(sample)
    json.loads(members["json"])
    return [np.asarray(Image.open(io.BytesIO(members[frame_member(j)])).convert("RGB"))
            for j in range(0, CANDIDATES, CANDIDATES // T)]


def time_samples(variants: dict[str, Path], sets: dict[str, str], reps: int) -> dict:
    """Per-sample CPU and wall ms, mp4 (A) vs shards (B), interleaved per item; also ShardSet.read alone."""
    out = {}
    for name, manifest in variants.items():
        a, b, shards = _datasets(manifest, sets[name])
        for ds in (a, b):  # warm-up: imports, first file opens
            assert ds[(99, 0)]["pixels"].shape == (T, 3, SIZE, SIZE)
        ms: dict[str, list[float]] = {k: [] for k in ("a_cpu", "a_wall", "b_cpu", "b_wall", "read_cpu", "read4_cpu")}
        for r in range(reps):
            for i in range(len(a)):
                for key, ds in (("a", a), ("b", b)):
                    item, cpu, wall = timed(lambda: ds[(r, i)])
                    assert "skip" not in item, item
                    ms[f"{key}_cpu"].append(cpu)
                    ms[f"{key}_wall"].append(wall)
                ms["read_cpu"].append(timed(lambda: shards.read(b.records[i].sample))[1])
                ms["read4_cpu"].append(timed(lambda: read_t_frames(shards, b.records[i].sample))[1])
        m = {k: med(v) for k, v in ms.items()}
        out[name] = {"samples": len(ms["a_cpu"]), "mp4_cpu_ms": round(m["a_cpu"], 2),
                     "mp4_wall_ms": round(m["a_wall"], 2), "shards_cpu_ms": round(m["b_cpu"], 2),
                     "shards_wall_ms": round(m["b_wall"], 2), "ratio_cpu": round(m["a_cpu"] / m["b_cpu"], 1),
                     "ratio_wall": round(m["a_wall"] / m["b_wall"], 1),
                     "shard_read_cpu_ms": round(m["read_cpu"], 2), "read_t_jpegs_cpu_ms": round(m["read4_cpu"], 2),
                     "mp4_cpu_ms_min_max": [round(min(ms["a_cpu"]), 1), round(max(ms["a_cpu"]), 1)]}
    return out


def jpeg_error(manifest: Path, shard_dir: str) -> dict:
    """Stored candidate frames vs the same frames decoded from the mp4 (the writer's decode)."""
    shards, root = ShardSet.open(shard_dir), open_clips(manifest).root
    abs_sum = sq_sum = values = jpeg_bytes = frames = 0
    psnrs: list[float] = []
    for record in shards.records:
        decoded = read_frames(resolve_video(record, root), lambda n: segment_indices(n, CANDIDATES, "eval"), SIZE)
        sample = shards.read(record.sample)
        assert sample.info["frames"] == decoded.indices, (sample.info["frames"], decoded.indices)
        a, s, p = lc.frame_error(decoded.frames, sample.frames)
        abs_sum, sq_sum, values, psnrs = abs_sum + a, sq_sum + s, values + decoded.frames.size, psnrs + p
        members = shards.read_members(record.sample)
        jpeg_bytes += sum(len(v) for k, v in members.items() if k.endswith(".jpg"))
        frames += len(decoded.frames)
    mse = sq_sum / values
    return {"mae": round(abs_sum / values, 3), "psnr_db": round(10 * math.log10(255.0 ** 2 / mse), 2),
            "min_frame_psnr_db": round(min(psnrs), 2), "bytes_per_frame": round(jpeg_bytes / frames),
            "shard_bytes_per_clip": round(sum(s["bytes"] for s in shards.meta["shards"]) / len(shards))}


def jpeg_table(variants: dict[str, Path], sets: dict[str, str], work: Path, qualities: list[int]) -> dict:
    out: dict = {}
    for name, manifest in variants.items():
        for q in qualities:
            shard_dir = sets[name] if q == 95 else build(manifest, work / "shards" / f"{name}-q{q}", q)["out"]
            out.setdefault(name, {})[str(q)] = jpeg_error(manifest, shard_dir)
    return out


def memory_case(case: str, directory: Path, records: int, reads: int) -> dict:
    """One memory measurement, in its own process (run through --memory-case)."""
    if case == "write":
        start = lc.proc_memory()["VmRSS"]
        count, cpu, wall = timed(lambda: write_record_table(lc.synthetic_rows(records), directory))
        return {"records": count, "write_s": round(wall / 1e3, 1),
                "writer_peak_over_start_MiB": round(lc.proc_memory()["VmHWM"] - start, 1),
                "text_MiB": round((directory / TEXT).stat().st_size / 2 ** 20, 1),
                "index_MiB": round((directory / INDEX).stat().st_size / 2 ** 20, 1)}
    gc.collect()
    before = lc.proc_memory()
    tic = time.perf_counter()
    if case == "table":
        held = RecordTable(directory)
        len(held)
    elif case == "list":
        table = RecordTable(directory)
        held = [ClipRecord(**table.raw(i)) for i in range(len(table))]
        del table
    else:
        held = []
    load_s = time.perf_counter() - tic
    gc.collect()
    after = lc.proc_memory()
    keys = lc.Keys()
    loader = DataLoader(lc.MemoryProbe(held, reads), batch_size=None, sampler=keys, num_workers=2,
                        persistent_workers=True, multiprocessing_context="spawn")
    keys.keys, tic = [0, 1], time.perf_counter()
    random_reads = list(loader)
    start_s = time.perf_counter() - tic
    keys.keys = [2, 3]
    full = list(loader)
    main = lc.proc_memory()
    del loader
    held_mib = {k: round(after[k] - before[k], 1) for k in ("VmRSS", "USS", "Anonymous") if k in after}
    return {"records": len(held), "load_s": round(load_s, 1), "main_held_MiB": held_mib, "main_peak_MiB": main["VmHWM"],
            "workers_start_and_read_s": round(start_s, 1), "workers_random": random_reads, "workers_full": full}


def run_case(case: str, directory: Path, records: int, reads: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-case", case, "--records-dir", str(directory),
           "--records", str(records), "--reads", str(reads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"memory case {case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory(work: Path, records: int, reads: int) -> dict:
    directory = work / "records"
    out = {"write": run_case("write", directory, records, reads)}
    for case in ("baseline", "table", "list"):
        out[case] = run_case(case, directory, records, reads)
    return out


def markdown(res: dict) -> str:
    """The tables of docs/benchmarks.md's loading section."""
    rows = ["| clips | MB per clip | keyframe interval | mp4 CPU ms | shards CPU ms | CPU ratio | mp4 wall ms | "
            "shards wall ms | wall ratio | of shards: ShardSet.read (8 JPEGs) CPU ms | 4 JPEGs only CPU ms |",
            "|" + "---|" * 11]
    for name, s in res["samples"].items():
        clips = res["clips"][name]
        mb = [round(c["bytes"] / 1e6, 2) for c in clips]
        gaps = sorted({g for c in clips for g in c["keyframe_interval"]})
        rows.append(f"| {name} ({len(clips)} clips, {s['samples']} samples) | {min(mb)}-{max(mb)} | {gaps} | "
                    f"{s['mp4_cpu_ms']} | {s['shards_cpu_ms']} | **{s['ratio_cpu']}x** | {s['mp4_wall_ms']} | "
                    f"{s['shards_wall_ms']} | {s['ratio_wall']}x | {s['shard_read_cpu_ms']} | {s['read_t_jpegs_cpu_ms']} |")
    rows += ["", "| clips | builds | clips per CPU s | clips per wall s |", "|---|---|---|---|"]
    rows += [f"| {n} | {b['builds']} x {b['clips']} clips | **{b['clips_per_cpu_s']}** | {b['clips_per_wall_s']} |"
             for n, b in res["build"].items()]
    rows += ["", "| clips | quality | MAE (0-255) | PSNR dB | worst frame PSNR dB | JPEG bytes per frame | "
             "shard bytes per clip |", "|---|---|---|---|---|---|---|"]
    for name, qs in res["jpeg"].items():
        rows += [f"| {name} | {q} | {e['mae']} | {e['psnr_db']} | {e['min_frame_psnr_db']} | {e['bytes_per_frame']:,} | "
                 f"{e['shard_bytes_per_clip']:,} |" for q, e in qs.items()]
    return "\n".join(rows + ["", _memory_markdown(res["memory"])])


def _memory_markdown(mem: dict) -> str:
    w = mem["write"]
    rows = [f"{w['records']:,} records: records.jsonl {w['text_MiB']} MiB + records.i64 {w['index_MiB']} MiB, "
            f"written in {w['write_s']} s (the writer's peak RSS: {w['writer_peak_over_start_MiB']} MiB above its start)", "",
            "| records held as | main: held (RSS / USS / anon MiB) | main peak RSS | worker after 10k random reads "
            "(RSS / PSS / USS / anon MiB) | worker after touching all | worker anon over baseline | workers start + "
            "read s |", "|---|---|---|---|---|---|---|"]
    base = med(wk["Anonymous"] for wk in mem["baseline"]["workers_random"])
    for case in ("baseline", "table", "list"):
        c = mem[case]
        h = c["main_held_MiB"]

        def worker(ws):
            return " / ".join(str(round(med(wk[k] for wk in ws))) for k in ("VmRSS", "Pss", "USS", "Anonymous"))
        extra = round(med(wk["Anonymous"] for wk in c["workers_full"]) - base, 1)
        rows.append(f"| {case} | {h['VmRSS']} / {h.get('USS')} / {h.get('Anonymous')} | {c['main_peak_MiB']} | "
                    f"{worker(c['workers_random'])} | {worker(c['workers_full'])} | {extra} | "
                    f"{c['workers_start_and_read_s']} |")
    return "\n".join(rows)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 clips per variant, 250k records (~1 min)")
    ap.add_argument("--out", type=Path, default=None, help="also write the results JSON here")
    ap.add_argument("--work", type=Path, default=None, help="keep clips, shards and records here (default: a "
                    "temporary directory, removed)")
    ap.add_argument("--clips", type=int, default=None, help="clips per keyframe variant (8; --quick 2)")
    ap.add_argument("--reps", type=int, default=None, help="timed passes over the clips (5; --quick 2)")
    ap.add_argument("--build-reps", type=int, default=None, help="timed shard builds per variant (3; --quick 1)")
    ap.add_argument("--records", type=int, default=None, help="records of the memory test (2.5M; --quick 250k)")
    ap.add_argument("--reads", type=int, default=10_000, help="random records each worker reads")
    ap.add_argument("--no-real", action="store_true", help="do not search the machine for real mp4 files")
    ap.add_argument("--memory-case", help=argparse.SUPPRESS)
    ap.add_argument("--records-dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    quick = args.quick
    args.clips = args.clips or (2 if quick else 8)
    args.reps = args.reps or (2 if quick else 5)
    args.build_reps = args.build_reps or (1 if quick else 3)
    args.records = args.records or (250_000 if quick else 2_500_000)
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    if args.memory_case:
        print(json.dumps(memory_case(args.memory_case, args.records_dir, args.records, args.reads)))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="evilm-loading-"))
    seconds, tic = {}, time.perf_counter()
    try:
        res: dict = {"threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS"),
                     "load_average": os.getloadavg(), "args": {k: str(v) for k, v in vars(args).items()}}
        variants, res["clips"] = make_inputs(work, args.clips, not args.no_real)
        seconds["clips"] = time.perf_counter() - tic
        res["build"], sets = time_builds(variants, work, args.build_reps)
        seconds["build"] = time.perf_counter() - tic - sum(seconds.values())
        res["samples"] = time_samples(variants, sets, args.reps)
        seconds["samples"] = time.perf_counter() - tic - sum(seconds.values())
        res["jpeg"] = jpeg_table(variants, sets, work, [95] if args.quick else [95, 90, 85])
        seconds["jpeg"] = time.perf_counter() - tic - sum(seconds.values())
        res["memory"] = memory(work, args.records, args.reads)
        seconds["memory"] = time.perf_counter() - tic - sum(seconds.values())
        res["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
        res["load_average_end"] = os.getloadavg()
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(markdown(res), file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
