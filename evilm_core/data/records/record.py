"""The canonical clip record: the one shape every dataset, task and evaluator consumes, so none
of them cares which public dataset a clip came from (docs/design.md, "Data")."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

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
    "charades_sta",
    "activitynet_captions",
    "qvhighlights",
    "didemo_moments",
)


def check_object(obj: Any, where: str, required: tuple[str, ...], expected: str,
                 allowed: list[str] | None = None) -> dict:
    """`obj` must be a JSON object holding every `required` key (and, given `allowed`, no other);
    errors name `where` and say what was expected. Shared by the canonical JSONL reader and the
    public formats' JSON readers."""
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected an object, got {type(obj).__name__}; {expected}")
    unknown = [k for k in obj if allowed is not None and k not in allowed]
    if unknown:
        raise ManifestError(f"{where}: unknown key '{unknown[0]}'; {expected}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise ManifestError(f"{where}: missing key '{missing[0]}'; {expected}")
    return obj


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
    meta: dict | None = None          # provenance as the source gives it (video2dataset's url, status, key,
                                      # ...): carried into shards and `retrieve query --json`, never interpreted
    start: float | None = None        # a moment: where the caption starts in the video, seconds (with `end`)
    end: float | None = None          # a moment: where it ends, seconds (after `start`)
    # the shard-set sample holding this clip's frames (set by the record table of a shard set,
    # evilm_core/data/records/table.py); never read from or written to a manifest
    sample: int | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict:
        """The record as a JSON object; None fields are dropped so manifests stay small."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "sample" and getattr(self, f.name) is not None}

    @classmethod
    def from_json(cls, obj: dict, where: str) -> ClipRecord:
        """Build a record from one canonical JSON object, strictly.

        Unknown keys are errors rather than ignored, so a typo ("captoin") cannot silently
        turn a caption dataset into one without text. `where` ("file:line") goes into messages.
        """
        allowed = [f.name for f in fields(cls) if f.name != "sample"]
        expected = f"expected keys: {', '.join(allowed)} (only 'video' is required)"
        _check_types(check_object(obj, where, ("video",), expected, allowed), where)
        return cls(**obj)


def first_metas(records) -> dict[str, dict]:
    """video -> the `meta` of its first record that has one (several records may share a video)."""
    metas: dict[str, dict] = {}
    for record in records:
        if record.meta and record.video not in metas:
            metas[record.video] = record.meta
    return metas


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
    check_moment(obj.get("start"), obj.get("end"), where)
    options = obj.get("options")
    if options is not None and (
        not isinstance(options, list) or not all(isinstance(o, str) for o in options)
    ):
        raise ManifestError(f"{where}: key 'options' must be a list of strings, got {options!r}")
    meta = obj.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise ManifestError(f"{where}: key 'meta' must be an object (the clip's provenance: url, status, ...), got "
                            f"{type(meta).__name__}")


def check_moment(start, end, where: str) -> None:
    """A moment's times: both or neither, finite numbers of seconds, 0 <= start < end. Whether
    they fit in the video is known only once it is opened (evaluation counts those it skips)."""
    if start is None and end is None:
        return
    if start is None or end is None:
        raise ManifestError(f"{where}: a moment needs both 'start' and 'end' (seconds), got start={start!r}, "
                            f"end={end!r}")
    for key, value in (("start", start), ("end", end)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ManifestError(f"{where}: key '{key}' must be a number of seconds, got {value!r}")
    if start < 0:
        raise ManifestError(f"{where}: 'start' {start} is before the video begins (seconds from its start, >= 0)")
    if start >= end:
        raise ManifestError(f"{where}: the moment starts at {start} s, not before its end {end} s; "
                            "'start' must be less than 'end'")
