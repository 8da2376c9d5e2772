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


def truncate_in_member(tar_path: Path, out: Path, member: int) -> Path:
    """Copy `tar_path` to `out` cut in the middle of the data of its `member`-th member (an
    interrupted download); the members before it stay whole."""
    with tarfile.open(tar_path) as tar:
        info = tar.getmembers()[member]
    out.write_bytes(tar_path.read_bytes()[:info.offset_data + info.size // 2])
    return out


def video2dataset_inputs(synth: Path, directory: Path) -> Path:
    """DIR/00000.tar: 4 synth clips, clip 1 corrupt; DIR/00001.tar: 4 more clips cut in the
    middle of clip 2's mp4 (clips 0 and 1 whole, the tail lost). Returns DIR."""
    from evilm_core.data.records.manifest import read_manifest

    clips = [(synth / r.video, r.caption) for r in read_manifest(synth / "train.jsonl")[:8]]
    write_video2dataset_tar(directory / "00000.tar", clips[:4], corrupt=(1,))
    whole = write_video2dataset_tar(directory / "whole.tar.part", clips[4:])
    truncate_in_member(whole, directory / "00001.tar", member=6)  # 000000002.mp4
    whole.unlink()
    return directory
