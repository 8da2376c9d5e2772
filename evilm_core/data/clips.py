"""Where a stage's clips come from, in one place: a manifest (videos decoded in the loop) or a
shard set (frames decoded once by `evilm data shards`; docs/data.md, "Shards"). Every recipe
key and flag that names clips (data.train, data.val, --manifest) goes through `open_clips` (or,
for a whole-collection command, `collect`), and the one question "is this a shard set?" is
answered by `open_shards` alone. A stage then reads clips through the `ClipSource` it got, never
from the bare path again.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from evilm_core.data.records.collect import collect_videos
from evilm_core.data.records.manifest import read_manifest, video_root
from evilm_core.data.records.record import ClipRecord, first_metas
from evilm_core.data.shards.layout import ShardSet, looks_like_shards
from evilm_core.data.shards.sources import expand_tars, job_clips, plan_jobs, tar_base
from evilm_core.data.video.read import MAX_VIDEO_BYTES, TarMember
from evilm_core.errors import EvilmError

if TYPE_CHECKING:  # the frame pickers need torch; records, keys and tar listings do not (an ONNX query
    # process, `evilm data check`)
    from evilm_core.data.dataset import FramePicker
    from evilm_core.data.label_cache import LabelCache


@dataclass
class ClipSource:
    path: str  # what the recipe or flag named
    records: Sequence[ClipRecord]  # a list (manifest) or the shard set's RecordTable
    root: str  # where relative video paths resolve (also for shard records: messages, keys)
    shards: ShardSet | None = None  # the frames, when `path` is a shard set

    def frames(self, num_frames: int, image_size: int, cache: LabelCache | None = None,
               decoder: str | None = "pyav", max_bytes: int = MAX_VIDEO_BYTES) -> FramePicker:
        """How a dataset over these clips gets its T frames (`decoder`: the resolved backend that
        decodes a manifest's videos; `max_bytes`: data.max_video_bytes)."""
        return picker(self.shards, self.path, num_frames, image_size, cache, decoder, max_bytes)

    def sample_videos(self) -> list[str]:
        """The video of each sample, in sample order (shard sets hold one sample per distinct video)."""
        if self.shards is None:
            return list(dict.fromkeys(r.video for r in self.records))
        videos: list[str] = [""] * len(self.shards)
        for record in self.records:
            if not videos[record.sample]:
                videos[record.sample] = record.video
        return videos


def picker(shards: ShardSet | None, path: str, num_frames: int, image_size: int,
           cache: LabelCache | None = None, decoder: str | None = "pyav",
           max_bytes: int = MAX_VIDEO_BYTES, members: dict[str, TarMember] | None = None) -> FramePicker:
    """Shard sets give their stored candidates; manifests decode with `decoder` (label-cache
    candidates with a cache), skipping videos over `max_bytes` unread; `members`: the tar member
    of each key of a collection of tars (Collection.members)."""
    from evilm_core.data.dataset import CachedCandidates, SegmentFrames, ShardCandidates

    if shards is None:
        if cache is not None:
            return CachedCandidates(cache, num_frames, image_size, decoder, max_bytes)
        return SegmentFrames(num_frames, image_size, decoder, max_bytes, members)
    stored = shards.settings
    if stored["size"] != image_size:
        raise EvilmError(f"the shard set {path} stores {stored['size']} px frames but data.image_size is "
                         f"{image_size}; rebuild it with `evilm data shards ... --size {image_size}`")
    if stored["candidates"] % num_frames:
        raise EvilmError(f"the shard set {path} stores {stored['candidates']} frames per clip, which cannot "
                         f"be split into {num_frames} equal groups (data.num_frames must divide it)")
    return ShardCandidates(shards, num_frames, cache)


def missing_input(path: str | os.PathLike, key: str) -> EvilmError:
    """What to say when the clips a recipe key names are not there: what would make them."""
    return EvilmError(f"{key}: {path} does not exist. It must be a manifest (docs/data.md says where each dataset "
                      "is published and which files each recipe expects) or a shard directory made by `evilm data "
                      "shards MANIFEST --out DIR`; `evilm data synth DIR` makes a synthetic dataset to try things on")


def open_clips(path: str | os.PathLike, format: str = "auto", root: str | None = None,
               key: str = "data.train") -> ClipSource:
    """The records (and frames) `path` names: a shard directory, else any manifest. `key`: the
    recipe key or flag that named it, for the message when it is missing."""
    if not Path(path).exists() and "{" not in str(path):
        raise missing_input(path, key)
    shards = open_shards(path)
    if shards is not None:
        return ClipSource(str(path), shards.records, str(Path(path).absolute()), shards)
    return ClipSource(str(path), read_manifest(path, format), video_root(root, path))


def open_shards(path: str | os.PathLike) -> ShardSet | None:
    """The shard set at `path`, or None when `path` is something else (a manifest, a directory of
    videos). An unfinished set is an error that says how to finish it."""
    return ShardSet.open(path) if looks_like_shards(path) else None


@dataclass
class Collection:
    """The distinct videos a whole-collection command (`label`, `retrieve index`) works on."""

    keys: list[str]  # one per video, in a stable order; never one twice
    paths: list[str | TarMember] | None  # where each video is: a file or a tar member (None: from `shards`)
    source: dict  # what was collected, for metadata
    shards: ShardSet | None = None  # the shard set whose sample i is keys[i]
    metas: dict[str, dict] = field(default_factory=dict)  # key -> its record's `meta` (provenance), where it has one
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (video, reason, detail) of input clips that
    # are no key: a shard set's skipped.tsv, tar samples without a usable video, duplicates, a damaged tar's tail

    def records(self, keys: list[str]) -> list[ClipRecord]:
        """Records of some of the keys (with their samples, for a shard set)."""
        if self.shards is None:
            return [ClipRecord(video=k) for k in keys]
        sample = {k: i for i, k in enumerate(self.keys)}
        return [ClipRecord(video=k, sample=sample[k]) for k in keys]

    @property
    def members(self) -> dict[str, TarMember] | None:
        """key -> tar member, for a collection of WebDataset tars (else None)."""
        if "tars" not in self.source:
            return None
        return dict(zip(self.keys, self.paths or []))


def collect(videos: str | os.PathLike | None = None, manifest: str | os.PathLike | None = None,
            format: str = "auto", root: str | os.PathLike | None = None,
            spool_dir: str | None = None) -> Collection:
    """`collect_videos`, plus shard sets and WebDataset tars given as --manifest (keys: each
    sample's video; `spool_dir`: where a big tar member is copied to be decoded: the command's --out)."""
    if manifest is not None and videos is None:
        shards = open_shards(manifest)
        if shards is not None:
            if root is not None:
                raise EvilmError("--root does not apply to a shard set (its frames are stored in it)")
            return _shard_collection(manifest, shards)
        if expand_tars(str(manifest)) is not None:
            return _tar_collection(str(manifest), spool_dir)
    metas: dict[str, dict] = {}
    keys, paths, described = collect_videos(videos, manifest, format, root, metas=metas)
    return Collection(keys, paths, described, metas=metas)


def _shard_collection(manifest: str | os.PathLike, shards: ShardSet) -> Collection:
    source = ClipSource(str(manifest), shards.records, str(Path(manifest).absolute()), shards)
    if not len(source.shards):
        raise EvilmError(f"the shard set {manifest} holds no sample (see its skipped.tsv)")
    keys = source.sample_videos()
    if len(set(keys)) != len(keys):  # sets built before duplicate keys were detected
        twice = next(k for k, n in Counter(keys).items() if n > 1)
        raise EvilmError(f"the shard set {manifest} holds {twice!r} in more than one sample "
                         f"({len(keys) - len(set(keys))} duplicates): a label cache or an index of it would hold a key "
                         "twice. Rebuild it with `evilm data shards` (duplicate keys are now skipped and listed in "
                         "skipped.tsv)")
    return Collection(keys, None, {"shards": source.root}, shards, first_metas(source.records), shards.skipped())


def _tar_collection(spec: str, spool_dir: str | None) -> Collection:
    """Every usable video of WebDataset tars, read from the tars (data/shards/tars.py)."""
    jobs, described = plan_jobs(spec, "auto", None, 1)
    keys, members, metas, problems = [], [], {}, []
    for job in jobs:
        found: list = []
        for clip in job_clips(job, found, spool_dir):
            keys.append(clip.video)
            members.append(clip.source)
            if clip.records[0].get("meta"):
                metas[clip.video] = clip.records[0]["meta"]
        problems += [(video, reason, detail) for _, video, reason, detail in found]
    if not keys:
        raise EvilmError(f"{spec}: no usable video in {len(jobs)} tar(s) ({len(problems)} samples skipped, e.g. "
                         f"{problems[0] if problems else 'none'}); `evilm data check {spec}` lists them")
    base = tar_base(spec, expand_tars(spec) or [])
    return Collection(keys, members, {"tars": described["input"], "root": str(base.absolute())}, metas=metas,
                      problems=problems)
