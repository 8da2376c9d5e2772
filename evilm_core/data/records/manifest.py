"""Manifests: read any supported format into canonical `ClipRecord`s (record.py), write JSON
Lines, and resolve where a record's video lives.

The per-format readers live in `formats.py`; this module holds format detection, the entry
points and the JSON Lines writer. Every failure is a `ManifestError` that names the file
(and line or item), the missing column or key, and what was expected, because data
preparation is where users lose the most time.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Iterable

from evilm_core.data.records import formats
from evilm_core.data.records.record import FORMATS, ClipRecord
from evilm_core.errors import ManifestError
from evilm_core.fs import write_jsonl as write_rows


def _unknown_format(what: str) -> ManifestError:
    return ManifestError(f"{what}; supported formats: {', '.join(FORMATS)}")


def _require_exists(path: Path) -> None:
    if not path.exists():
        raise ManifestError(f"manifest not found: {path}")


def _first_line(path: Path) -> str | None:
    """The first non-blank line, stripped; None for an empty file. Reads only that far."""
    try:
        with formats.open_text(path) as f:
            for line in f:
                if line.strip():
                    return line.strip()
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    return None


def _not_utf8(path: Path) -> ManifestError:
    """The error for a manifest that is not UTF-8, naming the first bad line (found by reading
    the bytes again: a decoder's position is relative to its buffer, not to the file)."""
    with open(path, "rb") as fh:
        offset = 0
        for n, raw in enumerate(fh, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return ManifestError(f"{path}:{n}: not UTF-8 text ({err.reason} at byte {offset + err.start}: "
                                     f"{raw[err.start:err.start + 4]!r}); save the manifest as UTF-8")
            offset += len(raw)
    return ManifestError(f"{path}: not UTF-8 text; save the manifest as UTF-8")


def _sniff(path: Path) -> tuple[str, Any]:
    """Detect the format; also return the parsed JSON document when one had to be loaded.

    Returning the document lets `read_manifest` parse a large JSON file once, not twice.
    """
    _require_exists(path)
    if path.is_dir():
        return "class_folders", None
    head = _first_line(path)
    first = _json_object(head)
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return ("qvhighlights" if _qvhighlights(first) else "jsonl"), None
    if head is None:
        raise ManifestError(f"{path}: empty manifest (the file has no content)")
    if head[0] in "{[":
        if _qvhighlights(first):
            return "qvhighlights", None
        if isinstance(first, dict) and "video" in first:
            return "jsonl", None
        data = formats.load_json(path)
        return formats.detect_json(data, path), data
    return formats.detect_header(head, path), None


def _json_object(line: str | None):
    try:
        return json.loads(line) if line else None
    except json.JSONDecodeError:
        return None


def _qvhighlights(first) -> bool:
    """A QVHighlights line: {qid, query, vid, ...} (its test split has no relevant_windows)."""
    return isinstance(first, dict) and "vid" in first and "query" in first and "video" not in first


def detect_format(path: str | os.PathLike) -> str:
    """Name the format of `path` (one of FORMATS) from its kind, extension and first line.

    A directory is `class_folders`; `.jsonl` is `jsonl`; JSON documents are told apart by
    their keys; CSV/TSV files by their header. Anything else is a ManifestError listing FORMATS.
    """
    return _sniff(Path(path))[0]


def read_manifest(path: str | os.PathLike, format: str = "auto") -> list[ClipRecord]:
    """Read any supported manifest into canonical records (format "auto" detects it).

    An empty result is an error: a manifest with no clips is always a preparation mistake,
    and failing here is clearer than an empty epoch later.
    """
    p = Path(path)
    data = None
    if format == "auto":
        fmt, data = _sniff(p)
    elif format in FORMATS:
        fmt = format
        _require_exists(p)
    else:
        raise _unknown_format(f"unknown manifest format '{format}' for {p}")
    try:
        records = formats.read(fmt, p, data)
    except UnicodeDecodeError:
        raise _not_utf8(p) from None
    except csv.Error as e:
        raise ManifestError(f"{p}: malformed CSV ({e})") from None
    if not records:
        raise ManifestError(f"{p}: empty manifest: no records found (read as format '{fmt}')")
    return records


def write_jsonl(records: Iterable[ClipRecord], path: str | os.PathLike) -> None:
    """Write records as JSON Lines atomically: a crash never leaves a truncated manifest."""
    write_rows((record.to_json() for record in records), path)


def resolve_video(record_or_path: ClipRecord | str | os.PathLike, root: str | os.PathLike | None) -> Path:
    """Where the clip lives on disk: absolute paths stay, relative ones join `root` (None: cwd).

    Manifests keep paths relative so a dataset can move; the root is given at run time.
    """
    video = record_or_path.video if isinstance(record_or_path, ClipRecord) else record_or_path
    p = Path(video)
    if p.is_absolute():
        return p
    return Path(root if root is not None else os.getcwd()) / p


def video_root(root: str | None, manifest: str | os.PathLike) -> str:
    """Where a manifest's relative video paths resolve: `data.root` if set, else the directory
    holding the manifest (so `data/synth/train.jsonl` finds `data/synth/videos/...`)."""
    if root:
        return str(Path(root))
    manifest = Path(manifest).absolute()
    return str(manifest if manifest.is_dir() else manifest.parent)  # class folders: the dir itself
