"""What `evilm data shards` reads: any manifest the project reads, or WebDataset tars in
video2dataset's layout (`{key}.mp4`, `{key}.txt`, `{key}.json`, ~1,000 per tar), and how the
input is cut into output shards (docs/data.md, "Shards").

- A manifest: its records grouped by video (MSR-VTT's 20 captions of a clip become one sample
  holding 20 records: the frames are stored once), in first-appearance order, cut into shards of
  `samples_per_shard` videos.
- Tars: a directory of `*.tar` (sorted), a brace pattern (`webvid/{00000..00099}.tar`) or one
  tar; output shard j is input tar j (video2dataset already sized them), read as a stream in the
  worker (its videos are decoded from the tar's bytes, never extracted to files).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from evilm_core.data.records.formats import VIDEO_EXTS
from evilm_core.data.records.manifest import read_manifest, resolve_video, video_root
from evilm_core.data.video.read import VideoBytes
from evilm_core.errors import EvilmError

_VIDEO_MEMBERS = tuple(e.lstrip(".") for e in VIDEO_EXTS)


@dataclass
class SourceClip:
    key: str  # the sample key: SHARD_POS (dot-free, unique, stable)
    video: str  # the records' `video` (tar input: "TAR/KEY.mp4")
    source: str | VideoBytes  # a path to decode, or the video's bytes
    records: list[dict] = field(default_factory=list)  # the records of this video (canonical JSON)


@dataclass
class ShardJob:
    index: int  # output shard number
    clips: list[tuple[str, str, list[dict]]] | None = None  # manifest input: (video, path, records)
    tar: str | None = None  # tar input: the input tar
    tar_name: str = ""  # the tar's name as keys and records show it


def sample_key(shard: int, pos: int) -> str:
    return f"{shard:06d}_{pos:06d}"


def expand_tars(spec: str) -> list[Path] | None:
    """The tars INPUT names (a directory of tars, a brace pattern, one .tar), or None for a manifest."""
    path = Path(spec)
    if path.is_dir() and any(path.glob("*.tar")):
        return sorted(path.glob("*.tar"))
    if "{" in spec and "}" in spec:
        from braceexpand import braceexpand  # a webdataset dependency

        tars = [Path(p) for p in braceexpand(spec)]
        missing = [p for p in tars if not p.is_file()]
        if missing:
            raise EvilmError(f"{spec}: {len(missing)} of {len(tars)} tars do not exist (e.g. {missing[0]})")
        return tars
    if path.suffix == ".tar":
        if not path.is_file():
            raise EvilmError(f"{path}: no such tar file")
        return [path]
    return None


def plan_jobs(spec: str, format: str, root: str | None, samples_per_shard: int) -> tuple[list[ShardJob], dict]:
    """(one job per output shard, a description of the input for the plan)."""
    tars = expand_tars(spec)
    if tars is not None:
        # names relative to the folder all the tars share: a pattern over two folders keeps them apart
        base = Path(spec) if Path(spec).is_dir() else Path(os.path.commonpath([t.absolute().parent for t in tars]))
        jobs = [ShardJob(j, tar=str(t), tar_name=_rel(t, base)) for j, t in enumerate(tars)]
        sizes = [t.stat().st_size for t in tars]
        digest = hashlib.sha256(json.dumps([[j.tar_name, s] for j, s in zip(jobs, sizes)]).encode()).hexdigest()
        return jobs, {"kind": "tars", "input": str(Path(spec).absolute()), "tars": len(tars), "digest": digest[:16]}
    records = read_manifest(spec, format)
    base = video_root(root, spec)
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(record.video, []).append(record.to_json())
    videos = list(groups)
    jobs = [ShardJob(j, clips=[(v, str(resolve_video(v, base)), groups[v]) for v in videos[s:s + samples_per_shard]])
            for j, s in enumerate(range(0, len(videos), samples_per_shard))]
    digest = hashlib.sha256(json.dumps([[v, groups[v]] for v in videos], sort_keys=True).encode()).hexdigest()
    return jobs, {"kind": "manifest", "input": str(Path(spec).absolute()), "format": format, "root": base,
                  "records": len(records), "videos": len(videos), "digest": digest[:16]}


def _rel(path: Path, base: Path) -> str:
    try:
        return path.absolute().relative_to(base.absolute()).as_posix()
    except ValueError:
        return path.name


def job_clips(job: ShardJob, problems: list[tuple[str, str, str, str]]) -> Iterator[SourceClip]:
    """The clips of one job, in input order; a damaged tar adds its problem to `problems` and ends."""
    if job.clips is not None:
        for pos, (video, path, records) in enumerate(job.clips):
            yield SourceClip(sample_key(job.index, pos), video, path, records)
        return
    yield from _tar_clips(job, problems)


def _tar_clips(job: ShardJob, problems: list) -> Iterator[SourceClip]:
    for pos, sample, error in _tar_samples(job.tar):
        if error is not None:  # tarfile.ReadError / EOF inside a member: the rest of this tar is lost
            problems.append((sample_key(job.index, pos), job.tar_name, "corrupt",
                             f"tar damaged after {pos} samples ({type(error).__name__}: {str(error)[:160]})"))
            return
        clip = _tar_sample(job, pos, sample, problems)
        if clip is not None:
            yield clip


def _tar_samples(tar: str) -> Iterator[tuple[int, dict | None, Exception | None]]:
    """(position, {"__key__", ext: bytes}, None) per sample of a tar read as a stream, then
    (position, None, error) if it is damaged. webdataset's file iterator reads the members; they
    are grouped here (not with its group_by_keys) so that the sample held when the read fails is
    still given when its video member was read whole."""
    from webdataset.tariterators import base_plus_ext, tar_file_expander

    pos, current = 0, None
    try:
        with open(tar, "rb") as fh:
            for member in tar_file_expander([{"url": tar, "stream": fh}]):
                if "fname" not in member:  # the end-of-shard marker
                    continue
                key, ext = base_plus_ext(member["fname"])
                if key is None:  # a member without an extension belongs to no sample
                    continue
                ext = ext.lower()
                if current is not None and current["__key__"] != key:
                    yield pos, current, None
                    pos, current = pos + 1, None
                current = current or {"__key__": key}
                current[ext] = member["data"]
    except Exception as err:
        if current is not None and any(e in current for e in _VIDEO_MEMBERS):
            yield pos, current, None
            pos, current = pos + 1, None
        yield pos, None, err
        return
    if current is not None:
        yield pos, current, None


def _tar_sample(job: ShardJob, pos: int, sample: dict, problems: list) -> SourceClip | None:
    key = sample_key(job.index, pos)
    ext = next((e for e in _VIDEO_MEMBERS if e in sample), None)
    name = f"{job.tar_name}/{sample['__key__']}"
    if ext is None:
        problems.append((key, name, "missing", f"no video member ({', '.join(sorted(k for k in sample if k[0] != '_'))})"))
        return None
    video = f"{name}.{ext}"
    meta = _json_member(sample.get("json"))
    caption = sample["txt"].decode("utf-8", "replace").strip() if "txt" in sample else meta.get("caption")
    record = {"video": video, **({"caption": caption} if caption else {})}
    return SourceClip(key, video, VideoBytes(video, sample[ext]), [record])


def _json_member(data: bytes | None) -> dict:
    try:
        value = json.loads(data) if data else {}
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def count_clips(jobs: list[ShardJob]) -> int | None:
    """Clips in the input when known without reading the tars (manifest input), else None."""
    if all(j.clips is not None for j in jobs):
        return sum(len(j.clips or ()) for j in jobs)
    return None


def input_size(jobs: list[ShardJob]) -> int:
    """Bytes of the input tars (0 for a manifest): what a progress bar can count."""
    return sum(os.path.getsize(j.tar) for j in jobs if j.tar)
