"""`evilm data check`: decode every clip of a manifest (or of WebDataset tars, or every sample of
a shard set) the way training would and count problems."""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from evilm_core.data.clips import open_shards
from evilm_core.data.records.manifest import detect_format, read_manifest, resolve_video, video_root
from evilm_core.data.shards.layout import ShardSet
from evilm_core.data.shards.sources import ShardJob, expand_tars, job_clips, plan_jobs
from evilm_core.data.video.read import read_clip, resolve_decoder
from evilm_core.errors import VideoDecodeError
from evilm_core.progress import Progress


@dataclass
class CheckReport:
    manifest: str  # the manifest checked
    format: str  # the reader used
    records: int = 0  # manifest records (several may share one video, e.g. MSR-VTT captions)
    total: int = 0  # distinct videos checked
    ok: int = 0  # decoded with at least num_frames distinct frames
    missing: int = 0  # file not found
    corrupt: int = 0  # empty, not a video, or no decodable frame
    short: int = 0  # decodes, but has fewer frames than num_frames (training repeats frames)
    problems: list[dict] = field(default_factory=list)  # {"video", "reason", "detail"}
    seconds: float = 0.0  # wall time
    decoder: str | None = None  # the backend that decoded (None: a shard set's stored frames)

    def to_json(self) -> dict:
        keys = ("manifest", "format", "records", "total", "ok", "missing", "corrupt", "short", "problems", "seconds",
                "decoder")
        return {k: getattr(self, k) for k in keys}


def _probe(args: tuple) -> tuple[str, str, str]:
    """Decode one clip in eval mode; returns (video, status, detail)."""
    video, path, num_frames, size, decoder = args
    try:
        clip = read_clip(path, num_frames, size, mode="eval", decoder=decoder)
    except VideoDecodeError as err:
        return video, err.reason, err.detail
    if clip.num_video_frames < num_frames:
        return video, "short", f"{clip.num_video_frames} frame(s) < {num_frames} sampled; frames repeat"
    return video, "ok", ""


def check_manifest(path: str, format: str = "auto", root: str | None = None, num_frames: int = 4,
                   image_size: int = 256, workers: int = 2, progress: Progress | None = None,
                   decoder: str = "auto") -> CheckReport:
    """Decode every clip of `path` (T frames at image_size, segment centres, with `decoder`) and
    count problems. The command's entry: the decoder is resolved here, once."""
    shards = open_shards(path)
    if shards is not None:
        return check_shards(shards, workers, progress)
    decoder = resolve_decoder(decoder, "--decoder")
    if expand_tars(path) is not None:
        return check_tars(path, num_frames, image_size, workers, progress, decoder)
    start = time.perf_counter()
    fmt = detect_format(path) if format == "auto" else format
    records = read_manifest(path, fmt)
    base = video_root(root, path)
    videos = list(dict.fromkeys(r.video for r in records))  # distinct, in manifest order
    jobs = [(v, str(resolve_video(v, base)), num_frames, image_size, decoder) for v in videos]
    report = CheckReport(manifest=str(path), format=fmt, records=len(records), total=len(jobs), decoder=decoder)
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        return _tally(report, pool.map(_probe, jobs, chunksize=4), len(jobs), progress, start)


def _tally(report: CheckReport, results, total: int, progress: Progress | None, start: float) -> CheckReport:
    """Count (video, status, detail) results into the report."""
    for done, (video, status, detail) in enumerate(results, 1):
        setattr(report, status, getattr(report, status) + 1)
        if status != "ok":
            report.problems.append({"video": video, "reason": status, "detail": detail})
        if progress:
            progress(done, total)
    report.seconds = round(time.perf_counter() - start, 3)
    return report


def _check_shard(args: tuple[ShardSet, int]) -> list[tuple[str, str, str]]:
    """Read every sample of one shard: (video, ok|corrupt|missing, detail) each."""
    shards, shard = args
    out = []
    for s in (int(i) for i in (shards.samples[:, 0] == shard).nonzero()[0]):
        try:
            sample = shards.read(s)
            out.append((sample.info["video"], "ok", ""))
        except VideoDecodeError as err:
            out.append((err.path, err.reason, err.detail))
    return out


def check_shards(shards: ShardSet, workers: int = 2, progress: Progress | None = None) -> CheckReport:
    """Every sample of a shard set: its members parse and its frames decode at the stored size."""
    start = time.perf_counter()
    report = CheckReport(manifest=str(shards.dir), format="shards", records=len(shards.records), total=len(shards))
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        per_shard = pool.map(_check_shard, [(shards, j) for j in range(len(shards.names))])
        return _tally(report, (r for rows in per_shard for r in rows), len(shards), progress, start)


def _check_tar(args: tuple[ShardJob, int, int, str]) -> list[tuple[str, str, str]]:
    job, num_frames, size, decoder = args
    problems: list = []
    out = [_probe((clip.video, clip.source, num_frames, size, decoder)) for clip in job_clips(job, problems)]
    return out + [(video, reason, detail) for _, video, reason, detail in problems]


def check_tars(spec: str, num_frames: int = 4, image_size: int = 256, workers: int = 2,
               progress: Progress | None = None, decoder: str = "pyav") -> CheckReport:
    """Every video of WebDataset tars (video2dataset's layout), decoded from the tar's bytes by the
    resolved backend `decoder`."""
    start = time.perf_counter()
    jobs, _ = plan_jobs(spec, "auto", None, 1)
    report = CheckReport(manifest=str(spec), format="webdataset", decoder=decoder)
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        args = [(j, num_frames, image_size, decoder) for j in jobs]
        rows = [r for per_tar in pool.map(_check_tar, args) for r in per_tar]
    report.records = report.total = len(rows)
    return _tally(report, rows, len(rows), progress, start)
