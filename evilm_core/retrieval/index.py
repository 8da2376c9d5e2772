"""A video index for text-to-video search: unimodal video embeddings of a collection.

Layout of an index directory:

    index.yaml                  {format, model_hash, checkpoint, embed_dim, num_frames, image_size, root, count,
                                precision, runtime}
                                (+ window, stride: a window index, format evilm-index/2)
    embeddings.safetensors      "embeddings" [N, E] float32, l2-normalised, row i = line i of keys.txt;
                                a window index adds "windows" [N, 3] float64: start, end, video duration (s)
    keys.txt                    one key per line: the manifest's `video` path, or the path under --videos
    keys.offsets                int64 byte offset of each line (keys are read without loading them all)
    meta.jsonl, meta.offsets    optional: row i's provenance (the record's `meta`: a source's url, status, ...) as
                                JSON, or an empty line; written when a part carried any
    ann.faiss, ann.json         optional approximate index over the rows (`--ann`, evilm_core/retrieval/ann.py)
    parts/                      batches written while indexing (resumable), folded in when complete
    skipped.tsv                 key, reason, detail of every video that could not be decoded

Building is resumable and shardable: each run embeds only the keys its shard owns that no
part or consolidated file holds yet, writing a part every `part_size` videos (temp file, then
rename), so an interrupted run loses at most one part. When every key of the collection is
present, the parts are folded into embeddings.safetensors + keys.txt under a POSIX lock (held by
the process, so it never outlives it; concurrent shards never fold twice) and a journal: the new
files are written complete beside the old ones, then `consolidate.journal` names them and the
parts they replace, then they are renamed in and the parts removed. A kill at any line leaves
either the old files and every part, or a journal that the next reader or writer rolls forward
(docs/reliability.md). Indexing into an existing index adds the new videos. Keys are stored
escaped (evilm_core/fs.py `escape_key`): a file name with a tab, a line break or bytes that are
not UTF-8 stays one line.

A window index (`--window`, docs/retrieval.md, "Moments") has one row per window; its parts
hold whole spans, and folding them in groups each video's rows together in time order (rows
of one video may sit in several parts, of several shards), so a video's windows are one run
of rows that starts at 0 s.

Embeddings are memory-mapped at query time (`IndexView`): the safetensors header gives the
byte offset of the tensor, so a million-video index is searched without reading it into RAM.
Everything here is NumPy (safetensors' NumPy API reads and writes the same files), so a query
process over an ONNX export never imports torch (docs/performance.md, "Start-up").
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from evilm_core.checkpoints.files import safetensors_header
from evilm_core.config.loader import save_yaml
from evilm_core.errors import EvilmError
from evilm_core.fs import (
    atomic_path,
    atomic_write_text,
    disk_errors,
    escape_key,
    process_lock,
    read_text,
    readable_mode,
    unescape_key,
)
from evilm_core.retrieval.keys import KeyList, Keys, read_keys, write_keys

log = logging.getLogger("evilm.retrieval")
FORMAT = "evilm-index/1"
FORMAT_WINDOWS = "evilm-index/2"  # an index of windows (rows: video key, start, end)
META, EMBEDDINGS, KEYS, PARTS, SKIPPED = "index.yaml", "embeddings.safetensors", "keys.txt", "parts", "skipped.tsv"
WINDOWS = "windows"  # the tensor of a window index's times, beside "embeddings"
ANN_META = "ann.json"  # present when an approximate index was built (evilm_core/retrieval/ann.py)
KEY_OFFSETS = "keys.offsets"  # byte offset of every line of keys.txt (evilm_core/retrieval/keys.py)
META_ROWS, META_OFFSETS = "meta.jsonl", "meta.offsets"  # each row's provenance, aligned with keys.txt
_FOLDED = (EMBEDDINGS, KEYS, KEY_OFFSETS, META_ROWS, META_OFFSETS)  # the files a consolidation replaces
JOURNAL, LOCK, NEXT = "consolidate.journal", ".consolidate.lock", ".next"  # NEXT: suffix of the files being folded in


@dataclass
class IndexMeta:
    format: str  # FORMAT
    model_hash: str  # sha256 of the checkpoint's model.safetensors: queries must use the same model
    checkpoint: str  # absolute path of the checkpoint the index was built with
    embed_dim: int  # E
    num_frames: int  # frames sampled per video (segment centres)
    image_size: int  # frames are resized to image_size x image_size
    root: str  # where relative keys resolve (for contact sheets)
    count: int = 0  # consolidated rows
    precision: str = "fp32"  # fp32 | bf16: the arithmetic of the video side (an index never mixes them)
    runtime: str | None = None  # torch | onnxruntime | openvino | torch.export: what computed it (never mixed);
    # None: an index written before runtimes were recorded (by PyTorch or onnxruntime)
    source: dict | None = None  # what was collected: {"manifest", "format", "root"} | {"videos"} | {"shards"}
    window: float | None = None  # seconds per window (a window index); None: one row per video
    stride: float | None = None  # seconds between a video's window starts (a window index)


def read_meta(directory: str | Path) -> IndexMeta:
    import yaml

    directory = Path(directory)
    path = directory / META
    if not directory.is_dir():
        raise EvilmError(f"{directory} is not an index directory: it does not exist (build one with "
                         "`evilm retrieve index --checkpoint CKPT --videos DIR --out INDEX`)")
    if not path.is_file():
        raise EvilmError(f"{directory} is not an index directory: it has no {META} "
                         "(build one with `evilm retrieve index`)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise EvilmError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict) or raw.get("format") not in (FORMAT, FORMAT_WINDOWS):
        raise EvilmError(f"{path} is not an evilm index (format {raw.get('format') if isinstance(raw, dict) else None!r}"
                         f", expected {FORMAT!r} or {FORMAT_WINDOWS!r})")
    try:
        return IndexMeta(**raw)
    except TypeError as err:
        raise EvilmError(f"{path} is damaged: {err}") from None


def write_meta(directory: Path, meta: IndexMeta) -> None:
    """index.yaml; the window keys only in a window index (an index without them is written as before)."""
    save_yaml({k: v for k, v in asdict(meta).items() if v is not None or k not in ("window", "stride", "runtime")},
              directory / META)


LEGACY_RUNTIMES = ("torch", "onnxruntime", "torch.export")  # what could have written an index without `runtime`


def check_same_arithmetic(meta: IndexMeta, runtime: str, precision: str, directory: Path) -> None:
    """Extending an index: the run must compute as the index's rows were computed (same runtime,
    same precision); a mix would rank rows of two arithmetics against each other."""
    same_runtime = meta.runtime == runtime if meta.runtime is not None else runtime in LEGACY_RUNTIMES
    if same_runtime and meta.precision == precision:
        return
    made = f"{meta.runtime or 'PyTorch or onnxruntime'} in {meta.precision}"
    if meta.runtime in ("onnxruntime", "openvino"):
        how = f"its export with --runtime {meta.runtime} --precision {meta.precision}"
    elif meta.runtime == "torch":
        how = f"its checkpoint with --precision {meta.precision}"
    else:
        how = f"--precision {meta.precision} and the source that built it"
    raise EvilmError(f"index {directory} holds {meta.precision} embeddings computed by {made}, but this run computes "
                     f"with {runtime} in {precision}; extend it with {how} (one index never mixes runtimes or "
                     "precisions), or write to a new --out")


def _load_embeddings(path: Path, name: str = "embeddings") -> np.ndarray:
    try:
        return load_file(str(path))[name]
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        raise EvilmError(f"{path} is damaged or truncated ({str(err).splitlines()[0][:200]}); delete it and run "
                         "`evilm retrieve index` again to re-embed its videos") from None


def _part_files(directory: Path) -> list[Path]:
    parts = directory / PARTS
    return sorted(parts.glob("*.safetensors")) if parts.is_dir() else []


def indexed_keys(directory: Path) -> set[str]:
    """Every key already embedded: consolidated rows and finished parts."""
    done = set(read_keys(directory / KEYS))
    for part in _part_files(directory):
        done.update(read_keys(part.with_suffix(".keys")))
    return done


def write_part(directory: Path, name: str, keys: list[str], embeddings, windows: np.ndarray | None = None,
               metas: list[dict | None] | None = None) -> None:
    """One finished batch: keys (and the rows' metas, when any) first, then the tensor renamed into
    place (a part counts only once its .safetensors exists, and then its .keys is complete).
    `embeddings`: [n, E], a tensor (on any device) or an array; `windows` [n, 3] (a window index:
    start, end, duration)."""
    if hasattr(embeddings, "detach"):
        embeddings = embeddings.detach().float().cpu().numpy()
    parts = directory / PARTS
    parts.mkdir(exist_ok=True)
    write_keys(parts / f"{name}.keys", keys)
    if metas and any(metas):
        write_keys(parts / f"{name}.meta", [_meta_line(m) for m in metas])
    tensors = {"embeddings": np.ascontiguousarray(embeddings, dtype=np.float32)}
    if windows is not None:
        tensors[WINDOWS] = np.ascontiguousarray(windows, dtype=np.float64)
    with atomic_path(parts / f"{name}.safetensors") as tmp:  # a full disk: atomic_path names it
        save_file(tensors, str(tmp))


def indexed_rows(directory: Path) -> tuple[list[str], np.ndarray]:
    """Every row of a window index so far (folded in and in parts): (keys, times [N, 3])."""
    keys, times = read_keys(directory / KEYS), [np.zeros((0, 3))]
    if keys:
        times.append(_load_embeddings(directory / EMBEDDINGS, WINDOWS))
    for part in _part_files(directory):
        keys += read_keys(part.with_suffix(".keys"))
        times.append(_load_embeddings(part, WINDOWS))
    return keys, np.concatenate(times)


def video_order(keys: list[str], times: np.ndarray) -> np.ndarray:
    """The row order that puts each video's windows together, videos in order of first
    appearance, each in time order (stable): what folding parts in writes."""
    first: dict[str, int] = {}
    video = np.fromiter((first.setdefault(k, len(first)) for k in keys), dtype=np.int64, count=len(keys))
    return np.lexsort((times[:, 0], video))


def _meta_line(meta: dict | None) -> str:
    return json.dumps(meta, ensure_ascii=False, sort_keys=True, default=str) if meta else ""


def _meta_rows(keys_file: Path, count: int) -> list[str]:
    """The meta lines beside a key file (a part's NAME.meta, the index's meta.jsonl), or `count` empty ones."""
    rows = read_keys(keys_file)
    return rows if rows else [""] * count


def skipped_keys(directory: Path) -> set[str]:
    path = directory / SKIPPED
    lines = read_text(path, "skip list").splitlines() if path.is_file() else []
    return {unescape_key(line.split("\t", 1)[0]) for line in lines}


def record_skipped(directory: Path, skipped: list[tuple[str, str, str]]) -> None:
    if skipped:
        with disk_errors(directory / SKIPPED), open(directory / SKIPPED, "a", encoding="utf-8") as fh:
            fh.writelines(f"{escape_key(k)}\t{r}\t{escape_key(' '.join(d.split()))}\n" for k, r, d in skipped)


def consolidate(directory: Path, meta: IndexMeta) -> bool:
    """Fold parts into embeddings.safetensors + keys.txt. False if another process holds the lock."""
    with process_lock(directory / LOCK) as held:
        if not held:
            return False
        _finish_journal(directory)
        for orphan in [*(directory / PARTS).glob("*.keys"), *(directory / PARTS).glob("*.meta")] \
                if (directory / PARTS).is_dir() else ():
            if not orphan.with_suffix(".safetensors").exists():  # a kill between a part's files
                orphan.unlink()
        parts = _part_files(directory)
        if not parts:
            return True
        tensors, keys, metas = _fold(directory, parts, meta.window is not None)
        try:
            needed = sum(t.nbytes for t in tensors.values())
            with disk_errors(directory / EMBEDDINGS, needed=needed):  # the old files stay until the journal
                save_file(tensors, str(directory / (EMBEDDINGS + NEXT)))
                readable_mode(directory / (EMBEDDINGS + NEXT))  # safetensors writes 0600
                write_keys(directory / KEYS, keys, offsets=True, tmp_suffix=NEXT)
                if any(metas):
                    write_keys(directory / META_ROWS, metas, offsets=True, tmp_suffix=NEXT)
                _fsync(directory / (EMBEDDINGS + NEXT))
                journal = {"count": len(keys), "parts": [p.name for p in parts]}
                atomic_write_text(directory / JOURNAL, json.dumps(journal) + "\n")  # the commit point
        except BaseException:
            if not (directory / JOURNAL).is_file():
                _finish_journal(directory)  # no journal: drop the half-written new files
            raise
        _finish_journal(directory, meta)
        return True


def _fold(directory: Path, parts: list[Path], windows: bool) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """The folded-in tensors, keys and meta lines: the rows there were, then the parts' rows (of a
    window index: grouped by video, video_order)."""
    old = read_keys(directory / KEYS)
    names = ("embeddings", WINDOWS) if windows else ("embeddings",)
    chunks: dict[str, list[np.ndarray]] = {n: [] for n in names}
    new: list[str] = []
    new_metas: list[str] = []
    for part in parts:
        part_keys = read_keys(part.with_suffix(".keys"))
        new += part_keys
        new_metas += _meta_rows(part.with_suffix(".meta"), len(part_keys))
        for name in names:
            chunks[name].append(_load_embeddings(part, name))
    order = video_order(new, np.concatenate(chunks[WINDOWS])) if windows else np.arange(len(new))
    tensors = {}
    for name in names:
        before = [_load_embeddings(directory / EMBEDDINGS, name)] if old else []
        tensors[name] = np.ascontiguousarray(np.concatenate(before + [np.concatenate(chunks[name])[order]]),
                                             dtype=np.float32 if name == "embeddings" else np.float64)
    metas = _meta_rows(directory / META_ROWS, len(old)) + [new_metas[i] for i in order]
    return tensors, old + [new[i] for i in order], metas


def _finish_journal(directory: Path, meta: IndexMeta | None = None) -> None:
    """Roll a committed consolidation forward (rename the new files in, update the count, remove
    the folded parts), or drop the new files of one that never reached its journal. Idempotent:
    a kill in here is finished by the next call. The caller holds the lock."""
    path = directory / JOURNAL
    if not path.is_file():
        for name in _FOLDED:
            (directory / (name + NEXT)).unlink(missing_ok=True)
        return
    journal = json.loads(read_text(path, "consolidation journal"))
    for name in _FOLDED:
        if (directory / (name + NEXT)).exists():
            os.replace(directory / (name + NEXT), directory / name)
    meta = meta or read_meta(directory)
    meta.count = journal["count"]
    write_meta(directory, meta)
    for name in journal["parts"]:
        part = directory / PARTS / name
        part.unlink(missing_ok=True)
        part.with_suffix(".keys").unlink(missing_ok=True)
        part.with_suffix(".meta").unlink(missing_ok=True)
    path.unlink()


def recover(directory: Path) -> None:
    """Finish a consolidation a kill interrupted (waits for a live one to end)."""
    if not (directory / JOURNAL).is_file():
        return
    try:
        with process_lock(directory / LOCK, wait=True):
            _finish_journal(directory)
    except PermissionError:
        raise EvilmError(f"{directory}: a consolidation was interrupted and this user cannot finish it (read-only); "
                         "run `evilm retrieve index` on it as its owner") from None


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _mapped_tensor(path: Path, name: str, dtype: str = "F32") -> np.ndarray:
    """A float32 (or float64: dtype "F64") matrix of a safetensors file as a read-only memory map
    (no copy into RAM)."""
    damaged = f"{path} is damaged or truncated; rebuild the index (`evilm retrieve index` into a new --out)"
    try:
        size, header = safetensors_header(path)
        entry = header[name]
        start, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
    except (ValueError, KeyError, TypeError, OSError, OverflowError):
        raise EvilmError(damaged) from None
    numpy_type = {"F32": np.float32, "F64": np.float64}[dtype]
    if entry.get("dtype") != dtype or len(shape) != 2:
        raise EvilmError(f"{path} has no {numpy_type.__name__} matrix {name!r}: {damaged}")
    width = np.dtype(numpy_type).itemsize
    if path.stat().st_size < 8 + size + end or end - start != width * shape[0] * shape[1]:
        raise EvilmError(f"{damaged} (the file is shorter than its header says)")
    if shape[0] == 0:
        return np.zeros(shape, dtype=numpy_type)
    # a plain array over the map: np.memmap's own slicing costs Python calls per search (serve)
    return np.asarray(np.memmap(path, dtype=numpy_type, mode="r", offset=8 + size + start, shape=shape))


class IndexView:
    """Read side: metadata, keys and the embedding rows (consolidated file memory-mapped, plus
    any parts not folded in yet, e.g. while other shards are still running)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.meta = read_meta(self.directory)
        recover(self.directory)
        consolidated, pending, self._pending_metas = KeyList(self.directory / KEYS), [], []
        self._metas = KeyList(self.directory / META_ROWS) if (self.directory / META_ROWS).is_file() else None
        blocks: list[np.ndarray] = []
        windowed = self.meta.window is not None
        times: list[np.ndarray] = []  # a window index's [n, 3] per block
        if len(consolidated):
            mapped = _mapped_tensor(self.directory / EMBEDDINGS, "embeddings")
            if mapped.shape[0] != len(consolidated):
                raise EvilmError(f"{self.directory}: {EMBEDDINGS} has {mapped.shape[0]} rows but {KEYS} lists "
                                 f"{len(consolidated)} keys; the index is damaged, rebuild it")
            blocks.append(mapped)
            if windowed:
                times.append(_mapped_tensor(self.directory / EMBEDDINGS, WINDOWS, "F64"))
        for part in _part_files(self.directory):
            part_keys = read_keys(part.with_suffix(".keys"))
            pending += part_keys
            self._pending_metas += _meta_rows(part.with_suffix(".meta"), len(part_keys))
            blocks.append(_load_embeddings(part))
            if windowed:
                times.append(_load_embeddings(part, WINDOWS))
        self.keys = Keys(consolidated, pending)
        self.times = times  # per block: [n, 3] start, end, duration of each row (a window index), else empty
        if not len(self.keys):
            raise EvilmError(f"{self.directory} holds no embedded videos yet (every video skipped, or indexing "
                             "has not finished a batch)")
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.keys)

    def embedding(self, row: int) -> np.ndarray:
        """Row `row`'s embedding [E] float32 (from the memory map, or a part not folded in yet)."""
        for block in self.blocks:
            if 0 <= row < block.shape[0]:
                return np.asarray(block[row], dtype=np.float32)
            row -= block.shape[0]
        raise IndexError(f"row out of range of the index {self.directory}")

    def row_meta(self, row: int) -> dict | None:
        """Row `row`'s provenance (its record's `meta`), None when it has none."""
        n = len(self.keys.consolidated)
        if row < n:
            line = self._metas[row] if self._metas is not None and row < len(self._metas) else ""
        else:
            line = self._pending_metas[row - n]
        try:
            return json.loads(line) if line else None
        except ValueError:
            raise EvilmError(f"{self.directory / META_ROWS}: row {row + 1} is not JSON; the index is damaged, "
                             "rebuild it with `evilm retrieve index`") from None

    def search(self, queries: np.ndarray, k: int, chunk: int = 262_144) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows by dot product for l2-normalised queries [Q, E] float32 -> (scores [Q, k],
        rows [Q, k] int64), best first (equal scores: the lower row first), scanning the rows in
        chunks so memory stays flat whatever the index size."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, len(self))
        best_s = np.full((queries.shape[0], 0), -np.inf, dtype=np.float32)
        best_i = np.zeros((queries.shape[0], 0), dtype=np.int64)
        offset = 0
        for block in self.blocks:
            for start in range(0, block.shape[0], chunk):
                s = queries @ block[start:start + chunk].T  # [Q, n]
                if not np.isfinite(s).all():  # a NaN row would drop out of every ranking unseen
                    row = offset + start + int(np.nonzero(~np.isfinite(s).all(axis=0))[0][0])
                    raise nonfinite_index(self, row)
                top = top_k(s, k)
                best_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], 1)
                best_i = np.concatenate([best_i, top + offset + start], 1)
                keep = top_k(best_s, k)
                best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
            offset += block.shape[0]
        return best_s, best_i


def refuse_nonfinite(keys: list[str], embeddings, checkpoint: str, out: Path) -> None:
    """An error naming the model when a row about to be written is not finite: a NaN embedding
    would rank first or last for every query, and a score of NaN is not a result
    (docs/reliability.md, "Non-finite numbers")."""
    rows = embeddings.detach().float().cpu().numpy() if hasattr(embeddings, "detach") else np.asarray(embeddings)
    bad = np.nonzero(~np.isfinite(rows).all(axis=1))[0].tolist()
    if bad:
        raise EvilmError(f"the model {checkpoint} embeds {len(bad)} of these {len(keys)} rows as NaN or infinity "
                         f"(e.g. {keys[bad[0]]!r}): its weights are not usable (a diverged training run?), and these "
                         f"embeddings were not written to {out}. Index with a checkpoint whose validation is finite")


def nonfinite_index(index: IndexView, row: int | None = None) -> EvilmError:
    """The error for an index holding a NaN or infinite embedding (written before `retrieve index`
    checked them, or damaged): its scores are not results."""
    where = f" (row {row + 1}, {index.keys[row]!r})" if row is not None else ""
    return EvilmError(f"index {index.directory} holds NaN or infinite embeddings{where}, so its scores are not "
                      f"results (built by {index.meta.checkpoint}, a diverged model?); rebuild it with `evilm "
                      "retrieve index` from a checkpoint whose validation is finite")


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest scores per row [Q, n] -> [Q, min(k, n)], best first; equal
    scores within the k keep the lower column first."""
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        part.sort(axis=1)  # column order, so the stable sort below breaks ties by column
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)
