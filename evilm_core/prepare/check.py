"""`evilm data check`: decode every clip of a manifest (or of WebDataset tars, or every sample of
a shard set) the way training would and count problems."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from evilm_core.data.clips import open_shards
from evilm_core.data.records.manifest import detect_format, read_manifest, resolve_video, video_root
from evilm_core.data.shards.layout import ShardSet
from evilm_core.data.shards.sources import ShardJob, expand_tars, job_clips, plan_jobs
from evilm_core.data.video.read import MAX_VIDEO_BYTES, read_clip, resolve_decoder
from evilm_core.errors import VideoDecodeError
from evilm_core.progress import Progress
from evilm_core.workers import Mark, run_jobs

CHUNK = 8  # manifest clips per job sent to a worker


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
    duplicate: int = 0  # a tar sample whose key came before in the tar (the first is kept)
    problems: list[dict] = field(default_factory=list)  # {"video", "reason", "detail"}
    seconds: float = 0.0  # wall time
    decoder: str | None = None  # the backend that decoded (None: a shard set's stored frames)

    def to_json(self) -> dict:
        keys = ("manifest", "format", "records", "total", "ok", "missing", "corrupt", "short", "duplicate", "problems",
                "seconds", "decoder")
        return {k: getattr(self, k) for k in keys}


def _probe(args: tuple) -> tuple[str, str, str]:
    """Decode one clip in eval mode; returns (video, status, detail)."""
    video, path, num_frames, size, decoder, max_bytes = args
    try:
        clip = read_clip(path, num_frames, size, mode="eval", decoder=decoder, max_bytes=max_bytes)
    except VideoDecodeError as err:
        return video, err.reason, err.detail
    if clip.num_video_frames < num_frames:
        return video, "short", f"{clip.num_video_frames} frame(s) < {num_frames} sampled; frames repeat"
    return video, "ok", ""


def _each(items: Iterable, probe: Callable[[object], tuple[str, str, str]], name: Callable[[object], str],
          skip: dict[int, str] | None, mark: Mark | None) -> list[tuple[str, str, str]]:
    """(video, status, detail) of each item of a worker's job: item k is announced with mark(k)
    first; one that killed an earlier worker (`skip`, evilm_core/workers.py) is counted corrupt."""
    out = []
    for k, item in enumerate(items):
        if skip and k in skip:
            out.append((name(item), "corrupt", skip[k]))
            continue
        if mark is not None:
            mark(k)
        out.append(probe(item))
    return out


def _check_chunk(chunk: list[tuple], skip: dict[int, str] | None = None, mark: Mark | None = None) -> list:
    return _each(chunk, _probe, lambda args: args[0], skip, mark)


def check_manifest(path: str, format: str = "auto", root: str | None = None, num_frames: int = 4,
                   image_size: int = 256, workers: int = 2, progress: Progress | None = None,
                   decoder: str = "auto", max_video_bytes: int = MAX_VIDEO_BYTES) -> CheckReport:
    """Decode every clip of `path` (T frames at image_size, segment centres, with `decoder`) and
    count problems. The command's entry: the decoder is resolved here, once. Clips are decoded in
    worker processes (even one): a clip whose decoder crashes is counted corrupt with the cause."""
    shards = open_shards(path)
    if shards is not None:
        return check_shards(shards, workers, progress)
    decoder = resolve_decoder(decoder, "--decoder")
    if expand_tars(path) is not None:
        return check_tars(path, num_frames, image_size, workers, progress, decoder, max_video_bytes)
    start = time.perf_counter()
    fmt = detect_format(path) if format == "auto" else format
    records = read_manifest(path, fmt)
    base = video_root(root, path)
    videos = list(dict.fromkeys(r.video for r in records))  # distinct, in manifest order
    clips = [(v, str(resolve_video(v, base)), num_frames, image_size, decoder, max_video_bytes) for v in videos]
    report = CheckReport(manifest=str(path), format=fmt, records=len(records), total=len(clips), decoder=decoder)
    chunks = [clips[i:i + CHUNK] for i in range(0, len(clips), CHUNK)]
    rows = (row for rows in run_jobs(_check_chunk, chunks, workers) for row in rows)
    return _tally(report, rows, len(clips), progress, start)


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


def _read_sample(args: tuple[ShardSet, int]) -> tuple[str, str, str]:
    shards, s = args
    try:
        return shards.read(s).info["video"], "ok", ""
    except VideoDecodeError as err:
        return err.path, err.reason, err.detail


def _check_shard(args: tuple[ShardSet, int], skip: dict[int, str] | None = None, mark: Mark | None = None) -> list:
    """Read every sample of one shard: (video, ok|corrupt|missing, detail) each."""
    shards, shard = args
    samples = [(shards, int(i)) for i in (shards.samples[:, 0] == shard).nonzero()[0]]
    return _each(samples, _read_sample, lambda a: f"{shards.dir / shards.names[shard]} sample {a[1]}", skip, mark)


def check_shards(shards: ShardSet, workers: int = 2, progress: Progress | None = None) -> CheckReport:
    """Every sample of a shard set: its members parse and its frames decode at the stored size."""
    start = time.perf_counter()
    report = CheckReport(manifest=str(shards.dir), format="shards", records=len(shards.records), total=len(shards))
    per_shard = run_jobs(_check_shard, [(shards, j) for j in range(len(shards.names))], workers)
    return _tally(report, (r for rows in per_shard for r in rows), len(shards), progress, start)


def _check_tar(args: tuple[ShardJob, int, int, str, int], skip: dict[int, str] | None = None,
               mark: Mark | None = None) -> list[tuple[str, str, str]]:
    job, num_frames, size, decoder, max_bytes = args
    problems: list = []
    clips = ((clip.video, clip.source, num_frames, size, decoder, max_bytes) for clip in job_clips(job, problems))
    out = _each(clips, _probe, lambda a: a[0], skip, mark)
    return out + [(video, reason, detail) for _, video, reason, detail in problems]


def check_tars(spec: str, num_frames: int = 4, image_size: int = 256, workers: int = 2,
               progress: Progress | None = None, decoder: str = "pyav",
               max_video_bytes: int = MAX_VIDEO_BYTES) -> CheckReport:
    """Every video of WebDataset tars (video2dataset's layout), decoded from the tars by the
    resolved backend `decoder` (a member over 64 MiB from a copy in the system's temporary
    directory: `data check` has no output directory)."""
    start = time.perf_counter()
    jobs, _ = plan_jobs(spec, "auto", None, 1)
    report = CheckReport(manifest=str(spec), format="webdataset", decoder=decoder)
    args = [(j, num_frames, image_size, decoder, max_video_bytes) for j in jobs]
    rows = [r for per_tar in run_jobs(_check_tar, args, workers) for r in per_tar]
    report.records = report.total = len(rows)
    return _tally(report, rows, len(rows), progress, start)
