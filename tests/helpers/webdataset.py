"""video2dataset-layout WebDataset tars for tests: `{key}.mp4`, `{key}.txt`, `{key}.json` per clip."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0
    tar.addfile(info, io.BytesIO(data))


def write_video2dataset_tar(path: Path, clips: list[tuple[Path, str]], corrupt: tuple[int, ...] = ()) -> Path:
    """`clips`: (mp4 file, caption); the clips at positions `corrupt` get garbage bytes as their mp4."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i, (video, caption) in enumerate(clips):
            key = f"{i:09d}"
            data = b"not a video at all" * 10 if i in corrupt else video.read_bytes()
            add_member(tar, f"{key}.mp4", data)
            add_member(tar, f"{key}.txt", caption.encode())
            add_member(tar, f"{key}.json", json.dumps({"key": key, "caption": caption, "status": "success",
                                                      "url": f"https://example.org/{key}.mp4"}).encode())
    return path
