"""Which videos a whole-collection command works on, and which share of them one process takes.

`evilm label` and `evilm retrieve index` both take a directory of videos or a manifest, and
both split the work across processes or nodes with `--shard i/n` (the keys i, i+n, i+2n, ...).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from evilm_core.data.formats import VIDEO_EXTS
from evilm_core.data.manifest import read_manifest, resolve_video, video_root
from evilm_core.errors import EvilmError


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """'i/n' (or (i, n)) -> (i, n) with 0 <= i < n; None stays None."""
    if shard is None:
        return None
    if isinstance(shard, tuple):
        i, n = shard
    else:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(shard))
        i, n = (int(m.group(1)), int(m.group(2))) if m else (-1, 0)
    if not 0 <= i < n:
        raise EvilmError(f"--shard must be i/n with 0 <= i < n (e.g. 0/4 ... 3/4), got {shard!r}")
    return i, n


def shard_of(items: list, shard: tuple[int, int]) -> list:
    """The items shard (i, n) owns: i, i+n, i+2n, ..."""
    i, n = shard
    return items[i::n]


def collect_videos(videos: str | os.PathLike | None = None, manifest: str | os.PathLike | None = None,
                   format: str = "auto", root: str | os.PathLike | None = None) -> tuple[list[str], list[str], dict]:
    """(keys, paths, source): the distinct videos to label, in a stable order.

    --videos DIR: every video file under DIR (sorted; key = path relative to DIR).
    --manifest FILE: the manifest's distinct `video` strings in order (key = that string),
    resolved against --root (default: the manifest's directory).
    """
    if (videos is None) == (manifest is None):
        raise EvilmError("give exactly one of --videos DIR or --manifest FILE")
    if videos is not None:
        if root is not None:
            raise EvilmError("--root applies to --manifest only; with --videos DIR the keys are relative to DIR")
        base = Path(videos)
        if not base.is_dir():
            raise EvilmError(f"--videos {base}: not a directory")
        keys = sorted(p.relative_to(base).as_posix() for p in base.rglob("*")
                      if p.suffix.lower() in VIDEO_EXTS and p.is_file()
                      and not any(part.startswith(".") for part in p.relative_to(base).parts))
        if not keys:
            raise EvilmError(f"no video files ({', '.join(VIDEO_EXTS)}) under {base}")
        return keys, [str(base / k) for k in keys], {"videos": str(base.absolute())}
    records = read_manifest(manifest, format)
    base = video_root(str(root) if root is not None else None, manifest)
    keys = list(dict.fromkeys(r.video for r in records))
    source = {"manifest": str(Path(manifest).absolute()), "format": format, "root": base}
    return keys, [str(resolve_video(k, base)) for k in keys], source
