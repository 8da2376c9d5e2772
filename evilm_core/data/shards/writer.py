"""Writing one shard: decode each clip's F candidate frames once, resize, encode as JPEG and
append the sample to a WebDataset tar (the layout of webdataset's TarWriter, so any WebDataset
reader can consume it); then the shard's part file, which is what marks it finished (docs/data.md, "Shards").

Frames: the label cache's candidates (segment centres of F equal segments, evilm_core/data/
label_cache.py), decoded straight to size x size by the decoder, as every evilm decode is (the
aspect ratio is not kept: a 596x336 clip is squashed to 256x256, exactly what training on the
mp4 sees). JPEG: quality 95, 4:2:0 chroma like the H.264 source; Pillow's encoder, so the same
frames give the same bytes. Tar members carry mtime 0 and fixed owners: an interrupted and an
uninterrupted run write byte-identical shards.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evilm_core.data.shards.layout import PARTS, frame_member, shard_name
from evilm_core.data.shards.sources import ShardJob, SourceClip, job_clips
from evilm_core.data.video.read import MAX_VIDEO_BYTES, read_frames, segment_indices
from evilm_core.errors import VideoDecodeError
from evilm_core.fs import atomic_path, atomic_write_text, disk_errors
from evilm_core.workers import Mark

CANDIDATE_RULE = "segment-centres"  # the label cache's rule (label_cache.CANDIDATE_RULE)


@dataclass(frozen=True)
class ShardSettings:
    candidates: int = 8  # F frames stored per clip (the label cache's candidates)
    size: int = 256  # frames are stored size x size (aspect ratio squashed, as training decodes)
    quality: int = 95  # JPEG quality
    decoder: str = "auto"  # what decodes the frames (decoders.DECODERS); build_shards records the resolved backend
    max_video_bytes: int = MAX_VIDEO_BYTES  # a bigger video (file or tar member) is skipped and counted, never read

    def to_json(self) -> dict:
        return {"candidates": self.candidates, "size": self.size, "quality": self.quality, "decoder": self.decoder,
                "candidate_rule": CANDIDATE_RULE, "resize": "squash", "image": "jpeg-4:2:0",
                "max_video_bytes": self.max_video_bytes}


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality, subsampling=2)
    return buf.getvalue()


def encode_clip(clip: SourceClip, settings: ShardSettings) -> dict:
    """The WebDataset sample of one clip (raises VideoDecodeError when it cannot be decoded)."""
    f = settings.candidates
    decoded = read_frames(clip.source, lambda n: segment_indices(n, f, "eval"), settings.size, settings.decoder,
                          settings.max_video_bytes)
    info = {"key": clip.key, "video": clip.video, "frames": [int(i) for i in decoded.indices],
            "num_video_frames": int(decoded.num_video_frames), "fps": round(float(decoded.fps), 6),
            "records": clip.records}
    sample = {"__key__": clip.key, "json": json.dumps(info, sort_keys=True, ensure_ascii=False).encode("utf-8"),
              "txt": (next((r["caption"] for r in clip.records if r.get("caption")), "")).encode("utf-8")}
    for j, frame in enumerate(decoded.frames):
        sample[frame_member(j)] = encode_jpeg(frame, settings.quality)
    return sample


class ShardTar:
    """Samples appended to a tar as WebDataset's TarWriter writes them (members in the order of
    their sorted extensions, tarfile's default format, mode 0444, owner evilm, mtime 0), without
    importing webdataset, and with it torch, in the workers."""

    def __init__(self, fh):
        self.tar = tarfile.open(fileobj=fh, mode="w|")

    @property
    def offset(self) -> int:
        return self.tar.offset

    def write(self, sample: dict) -> None:
        key = sample["__key__"]
        for ext in sorted(k for k in sample if k != "__key__"):
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode, info.uname, info.gname = len(sample[ext]), 0, 0o444, "evilm", "evilm"
            self.tar.addfile(info, io.BytesIO(sample[ext]))

    def __enter__(self) -> ShardTar:
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            self.tar.close()  # the end blocks
        else:  # a full disk: nothing more is written (tarfile would try again when collected, to a closed file)
            self.tar.fileobj.closed = self.tar.closed = True


def write_shard(job: ShardJob, out: str, settings: ShardSettings, skip: dict[int, str] | None = None,
                mark: Mark | None = None) -> dict:
    """Write OUT/shard-J.tar and then OUT/parts/shard-J.json (the commit point); returns the part.
    `mark(k)` is called before clip k is decoded; the clips in `skip` ({k: cause}: their decoder
    killed its worker, evilm_core/workers.py) are counted corrupt without being decoded again."""
    out_dir, start = Path(out), time.perf_counter()
    samples, skipped, problems, clips = [], [], [], 0
    path = out_dir / shard_name(job.index)
    with disk_errors(path), atomic_path(path) as tmp, open(tmp, "wb") as fh, ShardTar(fh) as writer:
        for k, clip in enumerate(job_clips(job, problems, spool_dir=out)):
            clips += 1
            if skip and k in skip:
                skipped.append((clip.key, clip.video, "corrupt", skip[k]))
                continue
            if mark is not None:
                mark(k)
            try:
                sample = encode_clip(clip, settings)
            except VideoDecodeError as err:
                skipped.append((clip.key, clip.video, err.reason, err.detail))
                continue
            offset = writer.offset
            writer.write(sample)
            samples.append({"key": clip.key, "offset": offset, "length": writer.offset - offset,
                            "records": clip.records})
    part = {"shard": job.index, "name": path.name, "bytes": path.stat().st_size, "clips": clips + len(problems),
            "samples": samples, "skipped": skipped + problems}  # no timings: parts are byte-identical across runs
    atomic_write_text(out_dir / PARTS / f"{path.stem}.json", json.dumps(part, sort_keys=True) + "\n")
    return {"shard": job.index, "clips": part["clips"], "skipped": part["skipped"], "written": len(samples),
            "seconds": round(time.perf_counter() - start, 3)}


def read_part(out: Path, index: int) -> dict | None:
    """A finished shard's part file, or None when the shard is unfinished (no part, or a tar that
    does not match it: a kill between the two renames of a re-run)."""
    part_path, tar = out / PARTS / f"{Path(shard_name(index)).stem}.json", out / shard_name(index)
    try:
        part = json.loads(part_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not tar.is_file() or tar.stat().st_size != part.get("bytes"):
        return None
    return part
