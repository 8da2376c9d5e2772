"""What `evilm predict` is asked: the clips (video files as arguments, `--videos DIR`, or
`--manifest M` in any reader format or a shard set) and, per clip, the items its head answers
(a question, a set of options, nothing), checked against what the checkpoint takes
(predict/checkpoint.py, ACCEPTS) before any work starts."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from evilm_core.data.clips import ClipSource, open_clips
from evilm_core.data.records.collect import collect_videos
from evilm_core.data.records.record import ClipRecord
from evilm_core.errors import EvilmError
from evilm_core.fs import read_text
from evilm_core.predict.checkpoint import CheckpointInfo

HEADS = ("qa", "mc", "probe", "texts")  # what predict runs: a head, or the ranking of given texts


@dataclass
class PredictRequest:
    checkpoint: str  # checkpoint dir, run dir (final/, else newest step_*) or hf-hub:ORG/NAME[@REV]
    files: list[str] = field(default_factory=list)  # video files given as arguments (key: the argument)
    videos: str | None = None  # a directory of videos (key: the path under it)
    manifest: str | None = None  # a manifest of any reader format, or a shard set (key: its `video`)
    root: str | None = None  # where a manifest's relative paths resolve (default: its directory)
    format: str = "auto"  # the manifest's format (data/records/formats.py)
    question: str | None = None  # the question for every clip (qa; mc pairs it with each option)
    options: str | None = None  # "a|b|c": the options for every clip (mc)
    texts: str | None = None  # a file of texts to rank for each clip, one per line
    labels: str | None = None  # "a|b|c": labels to rank for each clip, each put through `template`
    template: str | None = None  # "a video of {}": how a label becomes a text (default "{}")
    top_k: int = 5  # answers, labels or texts per line
    out: str | None = None  # a JSON-lines file to write and resume (None: lines go to the caller)
    num_frames: int = 4  # frames per clip, segment centres
    batch_size: int = 32  # clips per loader batch
    num_workers: int | None = None  # loader processes (None: settings.index_plan; 0: this process)
    device: str = "auto"  # auto | cpu | cuda[:i]
    precision: str = "auto"  # auto | fp32 | bf16
    threads: int = 0  # torch CPU threads (0: auto)
    decoder: str = "auto"  # video decoder (config/sections.py DECODERS)


@dataclass
class Item:
    """One thing asked about a clip: one output line."""

    question: str | None = None  # qa: the question; mc: paired with each option, when given
    options: list[str] | None = None  # mc: the options


@dataclass
class Clip:
    record: ClipRecord  # what the dataset reads; its `video` is the clip's key
    items: list[Item]  # one per output line, in input order


@dataclass
class Plan:
    """What one predict run does."""

    head: str  # one of HEADS
    clips: list[Clip]  # the distinct clips, in input order
    source: ClipSource  # their root (and shard set)
    texts: list[str] | None = None  # texts head: the texts to embed
    names: list[str] | None = None  # texts head: what a line calls each (the labels, or the texts)
    field: str = "text"  # texts head: "text" or "label"


def split_list(value: str, flag: str, info: CheckpointInfo) -> list[str]:
    """'a|b|c' -> ['a', 'b', 'c'] (stripped); nothing in it is an error."""
    parts = [p.strip() for p in value.split("|")]
    if not any(parts):
        raise info.refuse(f"{flag} is empty; give entries separated by '|' (e.g. {flag} 'a dog|a cat')")
    if not all(parts):
        raise info.refuse(f"{flag} {value!r} has an empty entry; give entries separated by '|' (e.g. 'a dog|a cat')")
    return parts


def clip_source(req: PredictRequest, info: CheckpointInfo) -> ClipSource:
    """The clips: files as arguments, --videos DIR or --manifest M (exactly one)."""
    given = [name for name, value in (("video files", req.files), ("--videos", req.videos),
                                      ("--manifest", req.manifest)) if value]
    if len(given) != 1:
        raise info.refuse(f"give the videos one way: video files as arguments, --videos DIR or --manifest M "
                          f"({'none' if not given else ' and '.join(given)} given)")
    if req.root is not None and not req.manifest:
        raise EvilmError("--root applies to --manifest only (video files and --videos DIR name their own paths)")
    if req.manifest:
        return open_clips(req.manifest, req.format, req.root, "--manifest")
    if req.videos:
        keys, _, _ = collect_videos(req.videos)
        return ClipSource(req.videos, [ClipRecord(video=k) for k in keys], str(Path(req.videos).absolute()))
    for path in req.files:
        if not Path(path).is_file():
            raise info.refuse(f"video {path} {'is not a file' if Path(path).exists() else 'does not exist'}")
    return ClipSource("arguments", [ClipRecord(video=f) for f in dict.fromkeys(req.files)], os.getcwd())


def plan(req: PredictRequest, info: CheckpointInfo) -> Plan:
    """Check the inputs against the checkpoint and group what is asked per clip."""
    if req.top_k < 1:
        raise EvilmError(f"-k must be at least 1, got {req.top_k}")
    source = clip_source(req, info)
    head = _head(req, info, source.records)
    if head == "texts":
        texts, names, field_name = _texts(req, info)
        return Plan(head, [Clip(r, [Item()]) for r in _distinct(source.records)], source, texts, names, field_name)
    if head == "probe":
        return Plan(head, [Clip(r, [Item()]) for r in _distinct(source.records)], source)
    if req.question is not None and not req.question.strip():
        raise info.refuse("--question is empty")
    options = split_list(req.options, "--options", info) if req.options is not None else None
    if head == "qa" and req.question:
        return Plan(head, [Clip(r, [Item(req.question)]) for r in _distinct(source.records)], source)
    if options is not None:
        return Plan(head, [Clip(r, [Item(req.question, options)]) for r in _distinct(source.records)], source)
    if not req.manifest:
        raise info.refuse(f"nothing to answer: give {'--question' if head == 'qa' else '--options'} (videos without "
                          "a manifest come with no questions or options)")
    return Plan(head, _manifest_items(source, head, info, req.question), source)


def _head(req: PredictRequest, info: CheckpointInfo, records) -> str:
    """Which head answers: the checkpoint's task and the inputs given decide; input the checkpoint
    cannot take is refused, naming its task and what it takes."""
    if req.texts is not None and req.labels is not None:
        raise info.refuse("give --texts FILE or --labels 'a|b|c', not both")
    if req.template is not None and req.labels is None:
        raise info.refuse("--template applies to --labels")
    given = [flag for flag, value in (("--question", req.question), ("--options", req.options),
                                      ("--texts", req.texts), ("--labels", req.labels)) if value is not None]
    takes = {"qa": {"--question"}, "mc": {"--question", "--options"}, "probe": set(),
             "retrieval": {"--texts", "--labels"},
             "pretrained": {"--question", "--options", "--texts", "--labels"}}[info.task]
    refused = [flag for flag in given if flag not in takes]
    if refused:
        raise info.refuse(f"{refused[0]} does not apply to this checkpoint")
    if info.task in ("qa", "probe", "mc"):
        return info.task
    if req.texts is not None or req.labels is not None:
        if req.question is not None:
            raise info.refuse("--question goes with --options (zero-shot multiple choice), not with texts to rank")
        return "texts"
    if info.task == "retrieval" or (req.options is None and not any(r.options for r in records)):
        raise info.refuse("nothing to answer")
    return "mc"


def _texts(req: PredictRequest, info: CheckpointInfo) -> tuple[list[str], list[str], str]:
    """-> (texts to embed, their names in the output, the output's field name)."""
    if req.labels is not None:
        labels = split_list(req.labels, "--labels", info)
        template = req.template if req.template is not None else "{}"
        if template.count("{}") != 1:
            raise info.refuse(f"--template {template!r} must hold one '{{}}' where each label goes")
        return [template.replace("{}", label) for label in labels], labels, "label"
    if not Path(req.texts).is_file():
        raise info.refuse(f"--texts {req.texts} does not exist")
    texts = [line.strip() for line in read_text(req.texts, "texts file").splitlines() if line.strip()]
    if not texts:
        raise info.refuse(f"--texts {req.texts} holds no text (one per line)")
    return texts, texts, "text"


def _distinct(records) -> list[ClipRecord]:
    """The first record of each distinct video, in order (a shard set's records carry their sample)."""
    first: dict[str, ClipRecord] = {}
    for record in records:
        first.setdefault(record.video, record)
    return [ClipRecord(video=r.video, sample=r.sample) for r in first.values()]


def _manifest_items(source: ClipSource, head: str, info: CheckpointInfo, question: str | None) -> list[Clip]:
    """Each clip's items from its records: their questions (qa) or options (mc), in manifest order."""
    need = "question" if head == "qa" else "options"
    clips: dict[str, Clip] = {}
    for n, record in enumerate(source.records, 1):
        value = getattr(record, need)
        if not value:
            raise info.refuse(f"{source.path}: record {n} ({record.video}) has no '{need}' and no --{need} was given")
        item = Item(value) if head == "qa" else Item(question or record.question, list(value))
        clip = clips.setdefault(record.video, Clip(ClipRecord(video=record.video, sample=record.sample), []))
        clip.items.append(item)
    return list(clips.values())
