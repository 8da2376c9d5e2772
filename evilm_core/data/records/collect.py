"""Which videos a whole-collection command works on: `evilm label`, `evilm retrieve index` and
`evilm predict` take a directory of videos or a manifest (the share one process takes of them:
data/work_split.py)."""

from __future__ import annotations

import os
from pathlib import Path

from evilm_core.data.records.formats import VIDEO_EXTS
from evilm_core.data.records.manifest import read_manifest, resolve_video, video_root
from evilm_core.data.records.record import first_metas
from evilm_core.errors import EvilmError


def collect_videos(videos: str | os.PathLike | None = None, manifest: str | os.PathLike | None = None,
                   format: str = "auto", root: str | os.PathLike | None = None,
                   metas: dict | None = None) -> tuple[list[str], list[str], dict]:
    """(keys, paths, source): the distinct videos to label, in a stable order.

    --videos DIR: every video file under DIR (sorted; key = path relative to DIR).
    --manifest FILE: the manifest's distinct `video` strings in order (key = that string),
    resolved against --root (default: the manifest's directory).
    `metas`, when given, receives key -> the `meta` of the key's first record that has one.
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
    if metas is not None:
        metas.update(first_metas(records))
    source = {"manifest": str(Path(manifest).absolute()), "format": format, "root": base}
    return keys, [str(resolve_video(k, base)) for k in keys], source
