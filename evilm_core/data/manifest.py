"""The canonical clip manifest and the entry points that read any supported format into it.

Every task (pre-training, retrieval, QA, multiple choice, recognition) consumes one record
shape, `ClipRecord`, so the datasets and evaluators never care which public dataset a clip
came from. The per-format readers live in `formats.py`; this module holds the record, format
detection and the JSON Lines writer. Every failure is a `ManifestError` that names the file
(and line or item), the missing column or key, and what was expected, because data
preparation is where users lose the most time.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable

from evilm_core.errors import ManifestError

FORMATS = (
    "jsonl",
    "webvid",
    "msrvtt_train",
    "msrvtt_test",
    "msrvtt_mc",
    "msrvtt_qa",
    "msvd_qa",
    "tgif_qa",
    "didemo",
    "class_folders",
)


@dataclass
class ClipRecord:
    """One clip and whatever text goes with it; the unit every dataset and evaluator uses."""

    video: str                        # path as the manifest gives it (relative to root, or absolute)
    caption: str | None = None        # retrieval / pre-training text
    question: str | None = None       # QA / multiple-choice question
    answer: str | int | None = None   # QA: answer text; multiple choice: index into options
    options: list[str] | None = None  # multiple choice candidates
    label: str | None = None          # recognition class name
    split: str | None = None          # "train" | "val" | "test" when the source says

    def to_json(self) -> dict:
        """The record as a JSON object; None fields are dropped so manifests stay small."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_json(cls, obj: dict, where: str) -> ClipRecord:
        """Build a record from one canonical JSON object, strictly.

        Unknown keys are errors rather than ignored, so a typo ("captoin") cannot silently
        turn a caption dataset into one without text. `where` ("file:line") goes into messages.
        """
        allowed = [f.name for f in fields(cls)]
        expected = f"expected keys: {', '.join(allowed)} (only 'video' is required)"
        if not isinstance(obj, dict):
            raise ManifestError(f"{where}: expected a JSON object, got {type(obj).__name__}; {expected}")
        unknown = [k for k in obj if k not in allowed]
        if unknown:
            raise ManifestError(f"{where}: unknown key '{unknown[0]}'; {expected}")
        if "video" not in obj:
            raise ManifestError(f"{where}: missing key 'video'; {expected}")
        _check_types(obj, where)
        return cls(**obj)


def _check_types(obj: dict, where: str) -> None:
    """Reject wrongly typed values at read time, where the file and line are still known."""
    video = obj["video"]
    if not isinstance(video, str) or not video:
        raise ManifestError(f"{where}: key 'video' must be a non-empty string, got {video!r}")
    for key in ("caption", "question", "label", "split"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise ManifestError(f"{where}: key '{key}' must be a string, got {obj[key]!r}")
    answer = obj.get("answer")
    if answer is not None and (isinstance(answer, bool) or not isinstance(answer, (str, int))):
        raise ManifestError(f"{where}: key 'answer' must be a string or an integer, got {answer!r}")
    options = obj.get("options")
    if options is not None and (
        not isinstance(options, list) or not all(isinstance(o, str) for o in options)
    ):
        raise ManifestError(f"{where}: key 'options' must be a list of strings, got {options!r}")


def _unknown_format(what: str) -> ManifestError:
    return ManifestError(f"{what}; supported formats: {', '.join(FORMATS)}")


def _require_exists(path: Path) -> None:
    if not path.exists():
        raise ManifestError(f"manifest not found: {path}")


def _first_line(path: Path) -> str | None:
    """The first non-blank line, stripped; None for an empty file. Reads only that far."""
    from evilm_core.data import formats

    with formats.open_text(path) as f:
        for line in f:
            if line.strip():
                return line.strip()
    return None


def _sniff(path: Path) -> tuple[str, Any]:
    """Detect the format; also return the parsed JSON document when one had to be loaded.

    Returning the document lets `read_manifest` parse a large JSON file once, not twice.
    """
    from evilm_core.data import formats

    _require_exists(path)
    if path.is_dir():
        return "class_folders", None
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return "jsonl", None
    head = _first_line(path)
    if head is None:
        raise ManifestError(f"{path}: empty manifest (the file has no content)")
    if head[0] in "{[":
        try:
            first = json.loads(head)
        except json.JSONDecodeError:
            first = None
        if isinstance(first, dict) and "video" in first:
            return "jsonl", None
        data = formats.load_json(path)
        return formats.detect_json(data, path), data
    return formats.detect_header(head, path), None


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
    from evilm_core.data import formats

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
    except UnicodeDecodeError as e:
        raise ManifestError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise ManifestError(f"{p}: malformed CSV ({e})") from None
    if not records:
        raise ManifestError(f"{p}: empty manifest: no records found (read as format '{fmt}')")
    return records


def write_jsonl(records: Iterable[ClipRecord], path: str | os.PathLike) -> None:
    """Write records as JSON Lines atomically (temp file, then os.replace).

    A crash mid-write must never leave a truncated manifest that later reads as valid.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for record in records:
                f.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def resolve_video(record_or_path: ClipRecord | str | os.PathLike, root: str | os.PathLike | None) -> Path:
    """Where the clip lives on disk: absolute paths stay, relative ones join `root` (None: cwd).

    Manifests keep paths relative so a dataset can move; the root is given at run time.
    """
    video = record_or_path.video if isinstance(record_or_path, ClipRecord) else record_or_path
    p = Path(video)
    if p.is_absolute():
        return p
    return Path(root if root is not None else os.getcwd()) / p
