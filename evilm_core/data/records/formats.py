"""Readers for the public datasets' annotation files, exactly as the datasets publish them.

Each reader knows one published layout and maps it onto `ClipRecord`. When a file does not
match, the error names the file, the row or item, the missing column or key and the columns
or keys the layout has, because "which file, which column" is what users need to fix it.
Paths in the records are relative to the dataset's video root (given at run time).

The moment datasets (Charades-STA, ActivityNet Captions, QVHighlights, DiDeMo's times) give
one record per (video, sentence, start, end); a moment whose times are unusable (not numbers,
negative, start not before end) is skipped, and the count is logged with the first one, since a
published file cannot be fixed by its user (evilm's own JSONL manifest makes them errors).
"""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from evilm_core.data.records.record import FORMATS, ClipRecord, check_moment, check_object
from evilm_core.errors import ManifestError

log = logging.getLogger("evilm.data")

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov")
WEBVID_COLUMNS = ("videoid", "contentUrl", "duration", "page_dir", "name")
MSRVTT_TEST_COLUMNS = ("key", "vid_key", "video_id", "sentence")
MSRVTT_MC_COLUMNS = ("key", "vid_key", "video_id", "a1", "a2", "a3", "a4", "a5", "answer")
TGIF_MC_COLUMNS = ("gif_name", "question", "a1", "a2", "a3", "a4", "a5", "answer", "vid_id", "key")
TGIF_OPEN_COLUMNS = ("gif_name", "question", "answer", "vid_id", "key")
QA_KEYS = ("question", "answer", "video_id")
DIDEMO_SEGMENT = 5.0  # seconds per DiDeMo segment: `times` [s, e] covers [5 s, 5 (e + 1)]
_CHARADES_LINE = re.compile(r"^(\S+)\s+(\S+)\s+(\S+)##(.*)$")
_SPLIT_WORDS = {"train": "train", "val": "val", "valid": "val", "validation": "val",
                "validate": "val", "test": "test"}
_MSVD_MAPPING = "youtube_mapping.txt"


def open_text(path: Path) -> TextIO:
    """Open a manifest as UTF-8 text (a BOM from spreadsheet exports is dropped)."""
    try:
        return open(path, encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {path}") from None
    except IsADirectoryError:
        raise ManifestError(f"{path}: is a directory; only format 'class_folders' reads directories") from None
    except OSError as e:
        raise ManifestError(f"{path}: cannot read ({e.strerror})") from None


def load_json(path: Path) -> Any:
    """Parse a whole JSON document; a syntax error names file:line."""
    with open_text(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None


def split_from_name(path: Path) -> str | None:
    """The split a published file name states ("results_2M_val.csv", "Train_action_question.csv")."""
    for word in re.split(r"[^a-z0-9]+", path.stem.lower()):
        if word in _SPLIT_WORDS:
            return _SPLIT_WORDS[word]
    return None


# --------------------------------------------------------------------------- detection


def detect_json(data: Any, path: Path) -> str:
    """Tell the JSON formats apart by their keys (MSR-VTT-QA and MSVD-QA also by location)."""
    if isinstance(data, dict) and "videos" in data and "sentences" in data:
        return "msrvtt_train"
    if isinstance(data, list) and not data:
        raise ManifestError(f"{path}: empty manifest (an empty JSON list)")
    first = data[0] if isinstance(data, list) else None
    if isinstance(first, dict) and "question" in first and "video_id" in first:
        if _find_msvd_mapping(path) is not None or "msvd" in str(path).lower():
            return "msvd_qa"
        if "msrvtt" in str(path).lower():
            return "msrvtt_qa"
        raise ManifestError(
            f"{path}: a question/answer/video_id JSON list is either 'msrvtt_qa' or 'msvd_qa' and "
            f"the path does not say which (no 'msrvtt'/'msvd' in it, no {_MSVD_MAPPING} beside it); "
            "pass the format explicitly")
    if isinstance(first, dict) and "video" in first and "description" in first:
        return "didemo"
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "timestamps" in v and "sentences" in v
                                               for v in list(data.values())[:10]):
        return "activitynet_captions"
    raise ManifestError(
        f"{path}: unrecognised JSON manifest (expected an MSR-VTT {{'videos', 'sentences'}} object, "
        "a list of {'question', 'answer', 'video_id'} or of {'video', 'description'}); "
        f"supported formats: {', '.join(FORMATS)}")


def detect_header(head: str, path: Path) -> str:
    """Tell the CSV/TSV formats apart by their header line (Charades-STA has none: its first line
    is already a moment)."""
    if _CHARADES_LINE.match(head):
        return "charades_sta"
    if "\t" in head:
        columns = {c.strip() for c in head.split("\t")}
        if "gif_name" in columns:
            return "tgif_qa"
        if {"video_id", "a1", "a5", "answer"} <= columns:
            return "msrvtt_mc"
    columns = {c.strip().strip('"') for c in head.split(",")}
    if {"videoid", "page_dir", "name"} <= columns:
        return "webvid"
    if {"video_id", "sentence"} <= columns:
        return "msrvtt_test"
    raise ManifestError(
        f"{path}: unrecognised manifest (first line {head[:120]!r}); expected a WebVid CSV "
        f"({','.join(WEBVID_COLUMNS)}), the MSR-VTT test CSV ({','.join(MSRVTT_TEST_COLUMNS)}), "
        f"a TGIF-QA TSV (gif_name, question, ...), the MSR-VTT multiple-choice TSV "
        f"({', '.join(MSRVTT_MC_COLUMNS)}), Charades-STA lines (vid start end##sentence), JSON or JSON Lines; "
        f"supported formats: {', '.join(FORMATS)}")


# --------------------------------------------------------------------------- shared helpers


def _csv_rows(path: Path, required: tuple[str, ...], published: tuple[str, ...],
              delimiter: str = ",") -> Iterator[tuple[str, dict[str, str]]]:
    """Yield ("file:line", row) after checking the header has every required column."""
    with open_text(path) as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = [h.strip() for h in (reader.fieldnames or [])]
        expected = f"expected columns (as published): {', '.join(published)}"
        if not header:
            raise ManifestError(f"{path}: empty manifest (no header line); {expected}")
        reader.fieldnames = header
        missing = [c for c in required if c not in header]
        if missing:
            raise ManifestError(f"{path}: missing column {', '.join(repr(c) for c in missing)}; "
                                f"{expected}; found: {', '.join(header)}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            short = [c for c in required if row.get(c) is None]
            if short:
                raise ManifestError(f"{where}: row has no value for column '{short[0]}'; {expected}")
            yield where, row


def _json_items(data: Any, path: Path, keys: tuple[str, ...]) -> Iterator[tuple[str, dict]]:
    """Yield ("file item i", obj) for a JSON list of objects, checking each has `keys`."""
    expected = f"expected keys: {', '.join(keys)}"
    if not isinstance(data, list):
        raise ManifestError(f"{path}: expected a JSON list of objects; got {type(data).__name__}; {expected}")
    for i, item in enumerate(data):
        where = f"{path} item {i}"
        yield where, check_object(item, where, keys, expected)


# --------------------------------------------------------------------------- readers


def _json_lines(path: Path, example: str) -> Iterator[tuple[str, Any]]:
    """("file:line", object) of each non-blank line of a JSON Lines file."""
    with open_text(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{n}", json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{path}:{n}: not valid JSON ({e.msg}, column {e.colno}); each line "
                                    f"must be one object like {example}") from None


def read_jsonl(path: Path) -> list[ClipRecord]:
    """Canonical JSON Lines: one record object per line; blank lines are ignored."""
    return [ClipRecord.from_json(obj, where)
            for where, obj in _json_lines(path, '{"video": "a.mp4", "caption": "..."}')]


def read_webvid(path: Path) -> list[ClipRecord]:
    """WebVid results_*.csv: clip at {page_dir}/{videoid}.mp4, caption = `name` kept whole.

    Frozen-in-Time cuts captions at 350 characters; truncation belongs to the tokenizer here.
    """
    split = split_from_name(path)
    return [ClipRecord(video=f"{row['page_dir'].strip()}/{row['videoid'].strip()}.mp4",
                       caption=row["name"].strip(), split=split)
            for _, row in _csv_rows(path, ("videoid", "page_dir", "name"), WEBVID_COLUMNS)]


def read_msrvtt_train(data: Any, path: Path) -> list[ClipRecord]:
    """MSR-VTT train_val_videodatainfo.json / MSRVTT_data.json: one record per sentence.

    The split comes from the `videos` table ("validate" becomes "val").
    """
    if not isinstance(data, dict) or "videos" not in data or "sentences" not in data:
        raise ManifestError(f"{path}: expected a JSON object with keys 'videos' and 'sentences' "
                            "(MSR-VTT train_val_videodatainfo.json / MSRVTT_data.json)")
    splits = {}
    for _, video in _json_items(data["videos"], path, ("video_id",)):
        split = video.get("split")
        splits[video["video_id"]] = _SPLIT_WORDS.get(split, split) if isinstance(split, str) else None
    return [ClipRecord(video=f"{s['video_id']}.mp4", caption=str(s["caption"]).strip(),
                       split=splits.get(s["video_id"]))
            for _, s in _json_items(data["sentences"], path, ("video_id", "caption"))]


def read_msrvtt_test(path: Path) -> list[ClipRecord]:
    """MSR-VTT 1k-A test split, MSRVTT_JSFUSION_test.csv: one caption per video."""
    return [ClipRecord(video=f"{row['video_id'].strip()}.mp4", caption=row["sentence"].strip(), split="test")
            for _, row in _csv_rows(path, ("video_id", "sentence"), MSRVTT_TEST_COLUMNS)]


def read_msrvtt_mc(path: Path) -> list[ClipRecord]:
    """MSR-VTT multiple choice test set (JSFusion's MSR_MC_test.csv, tab-separated): five
    candidate captions a1..a5 per clip, `answer` the 0-based index of the true one."""
    required = ("video_id", "a1", "a2", "a3", "a4", "a5", "answer")
    return [ClipRecord(video=f"{row['video_id'].strip()}.mp4", options=[row[f"a{i}"].strip() for i in range(1, 6)],
                       answer=_choice_index(row["answer"].strip(), where), split="test")
            for where, row in _csv_rows(path, required, MSRVTT_MC_COLUMNS, delimiter="\t")]


def _qa_records(data: Any, path: Path, video_of: Callable[[Any, str], str]) -> list[ClipRecord]:
    split = split_from_name(path)
    return [ClipRecord(video=video_of(item["video_id"], where), question=str(item["question"]).strip(),
                       answer=str(item["answer"]).strip(), split=split)
            for where, item in _json_items(data, path, QA_KEYS)]


def read_msrvtt_qa(data: Any, path: Path) -> list[ClipRecord]:
    """MSRVTT-QA {train,val,test}_qa.json: integer video_id N is clip video{N}.mp4."""
    def video_of(vid: Any, where: str) -> str:
        name = str(vid)
        return f"{name if name.startswith('video') else 'video' + name}.mp4"
    return _qa_records(data, path, video_of)


def _find_msvd_mapping(path: Path) -> Path | None:
    for candidate in (path.parent / _MSVD_MAPPING, path.parent.parent / _MSVD_MAPPING):
        if candidate.is_file():
            return candidate
    return None


def _read_msvd_mapping(mapping: Path) -> dict[str, str]:
    """youtube_mapping.txt lines "<youtube_name> vid<N>" -> {"vid<N>": youtube_name}."""
    table = {}
    with open_text(mapping) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise ManifestError(f"{mapping}:{n}: expected '<youtube_name> vid<N>', got {line.strip()!r}")
            table[parts[1]] = parts[0]
    return table


def read_msvd_qa(data: Any, path: Path) -> list[ClipRecord]:
    """MSVD-QA {train,val,test}_qa.json: clip vid{N}.avi, or its YouTube name if mapped.

    The released YouTubeClips are named by YouTube id ("-4wsuPCjDBc_5_15.avi"); the QA files
    use "vid{N}". youtube_mapping.txt beside the json (or one directory up) links the two.
    """
    mapping_path = _find_msvd_mapping(path)
    mapping = _read_msvd_mapping(mapping_path) if mapping_path else None

    def video_of(vid: Any, where: str) -> str:
        key = str(vid) if str(vid).startswith("vid") else f"vid{vid}"
        if mapping is None:
            return f"{key}.avi"
        if key not in mapping:
            raise ManifestError(f"{where}: video_id {vid!r} ({key}) is not in {mapping_path}")
        return f"{mapping[key]}.avi"
    return _qa_records(data, path, video_of)


def read_tgif_qa(path: Path) -> list[ClipRecord]:
    """TGIF-QA {Train,Test}_{action,transition,frameqa,count}_question.csv (tab-separated).

    action/transition (a1..a5 columns) become multiple choice with an integer answer;
    frameqa/count become open QA with the answer as text. Clips are `{gif_name}.mp4`: the
    dataset ships GIFs and pipelines usually convert them to mp4 first.
    """
    with open_text(path) as f:
        header = {c.strip() for c in f.readline().split("\t")}
    multiple_choice = all(f"a{i}" in header for i in range(1, 6))
    required = ("gif_name", "question", "answer") + (("a1", "a2", "a3", "a4", "a5") if multiple_choice else ())
    published = TGIF_MC_COLUMNS if multiple_choice else TGIF_OPEN_COLUMNS
    split, records = split_from_name(path), []
    for where, row in _csv_rows(path, required, published, delimiter="\t"):
        record = ClipRecord(video=f"{row['gif_name'].strip()}.mp4", question=row["question"].strip(),
                            answer=row["answer"].strip(), split=split)
        if multiple_choice:
            record.options = [row[f"a{i}"].strip() for i in range(1, 6)]
            record.answer = _choice_index(record.answer, where)
        records.append(record)
    return records


def _choice_index(answer: str, where: str) -> int:
    if not answer.isdigit() or int(answer) > 4:
        raise ManifestError(f"{where}: column 'answer' must be an option index 0-4, got {answer!r}")
    return int(answer)


def read_didemo(data: Any, path: Path) -> list[ClipRecord]:
    """DiDeMo {train,val,test}_data.json: one paragraph record per video.

    Paragraph retrieval joins a video's descriptions with " " in file order. The video name
    is kept as given (often .mov/.mp4 originals; many pipelines convert them to mp4).
    """
    paragraphs: dict[str, list[str]] = {}
    for _, item in _json_items(data, path, ("video", "description")):
        paragraphs.setdefault(str(item["video"]), []).append(str(item["description"]).strip())
    split = split_from_name(path)
    return [ClipRecord(video=video, caption=" ".join(texts), split=split) for video, texts in paragraphs.items()]


def _class_clips(base: Path, root: Path, split: str | None) -> list[ClipRecord]:
    records = []
    for class_dir in sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")):
        for clip in sorted(class_dir.iterdir()):
            if clip.is_file() and clip.suffix.lower() in VIDEO_EXTS:
                records.append(ClipRecord(video=clip.relative_to(root).as_posix(), label=class_dir.name, split=split))
    return records


def read_class_folders(root: Path) -> list[ClipRecord]:
    """HMDB51/UCF-style `root/<class>/<clip>` or Kinetics-style `root/{train,val,test}/<class>/<clip>`.

    Paths are relative to `root` itself (so the video root is that directory). The split
    layout is used when `train/` sits beside `val/` (or `validation/`, `test/`); then only
    those split directories are walked. Order is sorted, so runs are reproducible.
    """
    if not root.is_dir():
        raise ManifestError(f"{root}: format 'class_folders' needs a directory laid out as "
                            f"<dir>/<class>/<clip>{{{','.join(VIDEO_EXTS)}}}")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir())
    names = {d.name for d in subdirs}
    if "train" in names and names & {"val", "valid", "validation", "validate", "test"}:
        return [r for d in subdirs if d.name in _SPLIT_WORDS for r in _class_clips(d, root, _SPLIT_WORDS[d.name])]
    return _class_clips(root, root, None)


# --------------------------------------------------------------------------- moments


def _moments(rows: Iterator[tuple[str, str, str, Any, Any]], path: Path) -> list[ClipRecord]:
    """Records of (where, video, sentence, start, end) rows; unusable times are skipped and counted."""
    split, records, bad = split_from_name(path), [], []
    for where, video, sentence, start, end in rows:
        try:
            start, end = float(start), float(end)
            check_moment(start, end, where)
        except (TypeError, ValueError, ManifestError) as err:
            bad.append(str(err))
            continue
        records.append(ClipRecord(video=video, caption=str(sentence).strip(), start=start, end=end, split=split))
    if bad:
        log.warning("%s: %d of %d moments skipped, their times are not usable (first: %s)", path, len(bad),
                    len(bad) + len(records), bad[0])
    return records


def _pair(times: Any) -> tuple[Any, Any]:
    """[start, end] as published, or (None, None) (then the moment is skipped and counted)."""
    return tuple(times) if isinstance(times, list) and len(times) == 2 else (None, None)


def read_charades_sta(path: Path) -> list[ClipRecord]:
    """Charades-STA charades_sta_{train,test}.txt: lines `vid start end##sentence` (seconds);
    clip `{vid}.mp4` (the Charades videos)."""
    def rows():
        with open_text(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                match = _CHARADES_LINE.match(line.strip())
                if match is None:
                    raise ManifestError(f"{path}:{n}: expected a Charades-STA line 'vid start end##sentence', "
                                        f"got {line.strip()[:120]!r}")
                vid, start, end, sentence = match.groups()
                yield f"{path}:{n}", f"{vid}.mp4", sentence, start, end
    return _moments(rows(), path)


def read_activitynet_captions(data: Any, path: Path) -> list[ClipRecord]:
    """ActivityNet Captions train.json / val_1.json / val_2.json: {video id: {duration,
    timestamps [[start, end], ...], sentences [...]}}, one record per sentence; clip `{id}.mp4`
    (ids keep their `v_` prefix)."""
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected a JSON object {{video id: {{duration, timestamps, sentences}}}} "
                            "(ActivityNet Captions)")

    def rows():
        expected = "expected keys: duration, timestamps, sentences (as many timestamps as sentences)"
        for vid, item in data.items():
            where = f"{path} video {vid}"
            check_object(item, where, ("timestamps", "sentences"), expected)
            if len(item["timestamps"]) != len(item["sentences"]):
                raise ManifestError(f"{where}: {len(item['timestamps'])} timestamps but {len(item['sentences'])} "
                                    f"sentences; {expected}")
            for i, (times, sentence) in enumerate(zip(item["timestamps"], item["sentences"])):
                yield f"{where} sentence {i}", f"{vid}.mp4", sentence, *_pair(times)
    return _moments(rows(), path)


def read_qvhighlights(path: Path) -> list[ClipRecord]:
    """QVHighlights highlight_{train,val}_release.jsonl: one query per line with `vid`, `query`
    and `relevant_windows` [[start, end], ...] (seconds); one record per window, clip
    `{vid}.mp4`. The test split withholds its windows, so it cannot be read."""
    def rows():
        expected = "expected keys: qid, query, duration, vid, relevant_windows (the test split has no windows)"
        for where, item in _json_lines(path, '{"qid": 1, "query": "...", "vid": "...", "relevant_windows": [[0, 4]]}'):
            check_object(item, where, ("vid", "query", "relevant_windows"), expected)
            for start, end in map(_pair, item["relevant_windows"]):
                yield where, f"{item['vid']}.mp4", item["query"], start, end
    return _moments(rows(), path)


def read_didemo_moments(data: Any, path: Path) -> list[ClipRecord]:
    """DiDeMo {train,val,test}_data.json with its moment times: `times` holds each annotator's
    [first, last] 5-second segment (inclusive), i.e. [5 first, 5 (last + 1)] seconds; one record
    per distinct annotated window, clip `video` as given. (Format `didemo` joins the
    descriptions into paragraphs instead.)"""
    def rows():
        for where, item in _json_items(data, path, ("video", "description", "times")):
            seen = set()
            for first, last in map(_pair, item["times"] if isinstance(item["times"], list) else [None]):
                if repr((first, last)) in seen:
                    continue
                seen.add(repr((first, last)))
                try:
                    start, end = DIDEMO_SEGMENT * float(first), DIDEMO_SEGMENT * (float(last) + 1)
                except (TypeError, ValueError):
                    start, end = first, last
                yield where, str(item["video"]), item["description"], start, end
    return _moments(rows(), path)


JSON_READERS: dict[str, Callable[[Any, Path], list[ClipRecord]]] = {
    "msrvtt_train": read_msrvtt_train, "msrvtt_qa": read_msrvtt_qa,
    "msvd_qa": read_msvd_qa, "didemo": read_didemo, "activitynet_captions": read_activitynet_captions,
    "didemo_moments": read_didemo_moments,
}
FILE_READERS: dict[str, Callable[[Path], list[ClipRecord]]] = {
    "jsonl": read_jsonl, "webvid": read_webvid, "msrvtt_test": read_msrvtt_test, "msrvtt_mc": read_msrvtt_mc,
    "tgif_qa": read_tgif_qa, "class_folders": read_class_folders, "charades_sta": read_charades_sta,
    "qvhighlights": read_qvhighlights,
}


def read(fmt: str, path: Path, data: Any = None) -> list[ClipRecord]:
    """Dispatch to the reader for `fmt`; `data` is an already parsed JSON document, if any."""
    if fmt in JSON_READERS:
        if path.is_dir():
            raise ManifestError(f"{path}: is a directory; format '{fmt}' reads a JSON file")
        return JSON_READERS[fmt](load_json(path) if data is None else data, path)
    return FILE_READERS[fmt](path)
