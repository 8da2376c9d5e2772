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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

from evilm_core.data.records.formats import VIDEO_EXTS
from evilm_core.data.records.manifest import read_manifest, resolve_video, video_root
from evilm_core.data.shards.tars import TarDamage, TarSample, read_text_member, tar_samples
from evilm_core.data.video.read import TarMember
from evilm_core.errors import EvilmError, VideoDecodeError

_VIDEO_MEMBERS = tuple(e.lstrip(".") for e in VIDEO_EXTS)
META_FIELD_CHARS = 2000  # a source JSON field longer than this (as JSON) is not kept in the record's meta


@dataclass
class SourceClip:
    key: str  # the sample key: SHARD_POS (dot-free, unique, stable)
    video: str  # the records' `video` (tar input: "TAR/KEY.mp4")
    source: str | TarMember  # a path to decode, or the video inside a tar
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
        base = tar_base(spec, tars)
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


def tar_base(spec: str, tars: list[Path]) -> Path:
    """The folder tar names are relative to: the one all the tars share (a pattern over two folders
    keeps them apart)."""
    return Path(spec) if Path(spec).is_dir() else Path(os.path.commonpath([t.absolute().parent for t in tars]))


def _rel(path: Path, base: Path) -> str:
    try:
        return path.absolute().relative_to(base.absolute()).as_posix()
    except ValueError:
        return path.name


def job_clips(job: ShardJob, problems: list[tuple[str, str, str, str]], spool_dir: str | None = None
              ) -> Iterator[SourceClip]:
    """The clips of one job, in input order; a sample that cannot be a clip (a duplicate key, no
    video member, an oversized caption) and a damaged tar's lost tail add their problem to
    `problems`. `spool_dir`: where a big tar member is copied to be decoded (tars.py)."""
    if job.clips is not None:
        for pos, (video, path, records) in enumerate(job.clips):
            yield SourceClip(sample_key(job.index, pos), video, path, records)
        return
    for sample in tar_samples(job.tar, job.tar_name, spool_dir):
        if isinstance(sample, TarDamage):  # the rest of this tar is lost
            problems.append((sample_key(job.index, sample.pos), job.tar_name, "corrupt",
                             f"tar damaged after {sample.pos} samples ({sample.detail})"))
            return
        clip = _tar_clip(job, sample, problems)
        if clip is not None:
            yield clip


def _tar_clip(job: ShardJob, sample: TarSample, problems: list) -> SourceClip | None:
    key, name = sample_key(job.index, sample.pos), f"{job.tar_name}/{sample.key}"
    ext = next((e for e in _VIDEO_MEMBERS if e in sample.members), None)
    if sample.duplicate_of is not None:
        problems.append((key, f"{name}.{ext}" if ext else name, "duplicate",
                         f"the key {sample.key!r} is sample {sample.duplicate_of} of the tar too; the first is kept"))
        return None
    if ext is None:
        problems.append((key, name, "missing", f"no video member ({', '.join(sorted(sample.members))})"))
        return None
    video = f"{name}.{ext}"
    try:
        text = read_text_member(sample.members.get("txt"))
        meta = _json_member(read_text_member(sample.members.get("json")))
    except VideoDecodeError as err:
        problems.append((key, video, "corrupt", err.detail))
        return None
    caption = text.decode("utf-8", "replace").strip() if text is not None else meta.get("caption")
    record = {"video": video, **({"caption": caption} if isinstance(caption, str) and caption else {})}
    provenance = source_meta(meta)
    if provenance:
        record["meta"] = provenance
    return SourceClip(key, video, replace(sample.members[ext], name=video), [record])


def _json_member(data: bytes | None) -> dict:
    try:
        value = json.loads(data) if data else {}
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def source_meta(obj: dict) -> dict:
    """A source's JSON (video2dataset's `url`, `status`, `key`, sizes, ...) as the record's `meta`:
    every field but the caption (the record's own), and none whose JSON is over META_FIELD_CHARS
    (a downloader's nested page dump is not provenance)."""
    return {k: v for k, v in obj.items()
            if k != "caption" and len(json.dumps(v, ensure_ascii=False)) <= META_FIELD_CHARS}


def count_clips(jobs: list[ShardJob]) -> int | None:
    """Clips in the input when known without reading the tars (manifest input), else None."""
    if all(j.clips is not None for j in jobs):
        return sum(len(j.clips or ()) for j in jobs)
    return None


def input_size(jobs: list[ShardJob]) -> int:
    """Bytes of the input tars (0 for a manifest): what a progress bar can count."""
    return sum(os.path.getsize(j.tar) for j in jobs if j.tar)
