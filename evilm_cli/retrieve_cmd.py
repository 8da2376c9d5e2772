"""`evilm retrieve index` and `evilm retrieve query`: text-to-video search over a collection."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from evilm_cli import options
from evilm_cli.common import console, emit_json, log, progress, results_console
from evilm_core.errors import EvilmError
from evilm_core.fs import escape_key

app = typer.Typer(help="Index videos and answer text queries (text-to-video search).", no_args_is_help=True)


@app.command("index")
def index(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint dir, run dir (final/, else newest "
                                "step_*), Hub id hf-hub:ORG/NAME[@REV] or export dir."),
    out: Path = typer.Option(..., "--out", help="Index directory: created, resumed, or extended with new videos."),
    videos: Path = typer.Option(None, "--videos", help="Index every video file under this directory."),
    manifest: Path = typer.Option(None, "--manifest", help="Index the distinct videos of this manifest, shard set or "
                                  "WebDataset tars (a directory of *.tar, a brace pattern or one tar)."),
    root: Path = typer.Option(None, "--root", help="Where a manifest's relative paths resolve (default: its directory)."),
    frames: int = typer.Option(4, "--frames", min=1, help="Frames per video (segment centres)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Videos per loader batch (a GPU embeds each in "
                                   "one pass; the CPU 16 frames at a time)."),
    workers: int = typer.Option(None, "--workers", min=0, show_default="auto", help="Loader processes. On the CPU "
                                "each decodes and embeds its clips (auto: one per core, at most 8); with a GPU they "
                                "decode (auto: 2). 0: everything in this process."),
    part_size: int = typer.Option(1024, "--part-size", min=1, help="Videos per part file (the most an interruption "
                                  "loses); with --window, windows, written at the end of a span of 32."),
    shard: str = typer.Option(None, "--shard", help="i/n: embed only videos i, i+n, ... (one run per node, same --out)."),
    device: str = options.device("retrieve index"),
    precision: str = options.precision("retrieve index"),
    ann: str = typer.Option(None, "--ann", help="Also build an approximate index: faiss-ivf, faiss-ivfpq or "
                            "faiss-hnsw (pip install 'evilm[faiss]'); queries use it unless --exact."),
    threads: int = options.threads("retrieve index"),
    json_out: bool = options.json_out(),
    decoder: str = options.decoder("retrieve index"),
    max_video_bytes: int = options.max_video_bytes(),
    runtime: str = options.runtime("retrieve index"),
    window: float = typer.Option(None, "--window", help="Seconds per window: each video longer than this gets one "
                                 "row per window, with its start and end (search inside long videos; "
                                 "docs/retrieval.md, \"Moments\"). A shorter video is one row."),
    stride: float = typer.Option(None, "--stride", help="Seconds between window starts, more than 0 and at most "
                                 "--window.", show_default="half the window"),
):
    """Embed videos with a checkpoint's (or an export's) video side into a searchable index.

    Re-running resumes an interrupted run; running on an existing index adds the videos it
    lacks; shards may run at once into the same --out (the last to finish folds the parts in).

    Example: evilm retrieve index --checkpoint runs/synthetic/retrieval --manifest data/synth/test.jsonl --out runs/synthetic/index
    From an export (onnxruntime): evilm retrieve index --checkpoint runs/synthetic/export --manifest data/synth/test.jsonl --out runs/synthetic/index-onnx
    OpenVINO in bf16: evilm retrieve index --checkpoint runs/synthetic/export --manifest data/synth/test.jsonl --out runs/synthetic/index-ov --runtime openvino --precision bf16
    At scale: evilm retrieve index --checkpoint CKPT --videos /data/clips --out /data/index --ann faiss-ivf
    Long videos: evilm retrieve index --checkpoint CKPT --videos /data/lectures --out /data/moments --window 4 --stride 2
    """
    from evilm_core.data.work_split import WHOLE, WorkSplit
    from evilm_core.retrieval.build import IndexRequest, build_index

    req = IndexRequest(checkpoint=str(checkpoint), out=str(out), videos=str(videos) if videos else None,
                       manifest=str(manifest) if manifest else None, root=str(root) if root else None,
                       num_frames=frames, batch_size=batch_size, num_workers=workers,
                       shard=WorkSplit.parse(shard) or WHOLE, part_size=part_size, device=device,
                       precision=precision, threads=threads, ann=ann, decoder=decoder, window=window, stride=stride,
                       max_video_bytes=max_video_bytes, runtime=runtime)
    with progress("retrieve index") as update:
        summary = build_index(req, progress=update)
    state = "complete" if summary["complete"] else "incomplete (other shards still to run)"
    done = f"{summary['embedded']} embedded now, {summary['already']} already there" if window is None else \
        (f"{summary['embedded']} windows embedded now ({summary['short']} videos no longer than a window: one row "
         f"each), {summary['already']} videos already there")
    results_console(json_out).print(f"index {summary['index']}: {done}, {summary['skipped']} skipped, "
                                    f"{summary['total']} videos in the collection; {state}", highlight=False)
    if json_out:
        emit_json(summary)


def _queries(args: list[str]):
    """Arguments, else stdin one per line (blank lines are passed over)."""
    from evilm_core.retrieval.query import check_query

    if args:
        for i, text in enumerate(args, 1):
            yield check_query(text, f"query argument {i}")
        return
    if sys.stdin.isatty():
        raise EvilmError("no query: give QUERY arguments or pipe queries one per line on stdin")
    for n, raw in enumerate(sys.stdin.buffer, 1):  # bytes: one bad line must not end the stream
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            log.warning("stdin line %d is not UTF-8 (byte %d: %r); skipped, the stream goes on", n, err.start,
                        raw[err.start:err.start + 4])
            continue
        if line.strip():
            yield line.strip()


def _line(hit, json_out: bool) -> str:
    """One result: TSV or JSON, with the moment's start and end on a window index."""
    from evilm_core.retrieval.query import short_text

    key = escape_key(hit.key)  # as keys.txt stores it: one field, valid UTF-8
    query = short_text(hit.query)  # a 10 MB query is not echoed on each of its k lines
    moment = hit.start is not None
    if json_out:
        row = {"query": query, "rank": hit.rank, "key": key, "score": round(hit.score, 6)}
        row.update({"start": round(hit.start, 3), "end": round(hit.end, 3)} if moment else {})
        return json.dumps({**row, **({"meta": hit.meta} if hit.meta else {})}, allow_nan=False, default=str)
    line = f"{escape_key(query)}\t{hit.rank}\t{key}\t{hit.score:.6f}"
    return f"{line}\t{hit.start:.3f}\t{hit.end:.3f}" if moment else line


@app.command("query")
def query(
    queries: list[str] = typer.Argument(None, help="Query texts; none: read one per line from stdin."),
    index_dir: Path = typer.Option(..., "--index", help="An index directory (`evilm retrieve index --out`)."),
    k: int = typer.Option(10, "-k", "--top-k", min=1, help="Results per query."),
    checkpoint: Path = typer.Option(None, "--checkpoint",
                                    help="The model's checkpoint (dir or hf-hub:ORG/NAME) if it moved "
                                    "(default: the one the index records)."),
    json_out: bool = options.json_out(help="One JSON object per line and result (query, rank, key, score, and "
                                      "the clip's meta when its source gave one: url, status, ...) instead of TSV "
                                      "lines."),
    sheet: Path = typer.Option(None, "--contact-sheet", help="Also draw the top-k clips of every query into this PNG."),
    batch: int = typer.Option(64, "--batch", min=1, help="Queries embedded together, of those that have arrived "
                              "(none waits for more: each answer streams as soon as it is ready)."),
    exact: bool = typer.Option(False, "--exact", help="Scan every embedding even when the index has an ANN index."),
    precision: str = options.precision("retrieve query"),
    threads: int = options.threads("retrieve query"),
    runtime: str = options.runtime("retrieve query"),
    text_int8: bool = typer.Option(False, "--text-int8", help="An ONNX export in onnxruntime: its text tower with "
                                   "int8 weights (made once, kept in the export's .runtime-cache/): 0.4x of fp32's "
                                   "time per query, but near ties may swap (quickstart: top-10 keys as fp32's for "
                                   "93% of captions; docs/benchmarks.md, \"Runtimes\")."),
    per_video: int = typer.Option(None, "--per-video", min=1, show_default="1", help="A window index: keep the N "
                                  "best moments of each video."),
    merge: float = typer.Option(None, "--merge", min=0.0, max=1.0, show_default="0.1", help="A window index: how far "
                                "below its peak a neighbouring window may score and still join the moment, as a share "
                                "of the peak's lead over the video's median window (0: single windows)."),
):
    """Find the clips that best match text queries.

    Prints one line per result, tab-separated: query, rank, key, score (or JSON with --json),
    flushed per query so it streams in a pipeline. Loads only the text side of the model.

    On a window index (`retrieve index --window`) each result is a moment: neighbouring windows
    of one video scoring close to the best are merged, and each line adds its start and end in
    seconds (query, rank, key, score, start, end; docs/retrieval.md, "Moments").

    Words the model's vocabulary lacks are named in a warning on stderr (they carry no meaning).

    Example: evilm retrieve query --index runs/synthetic/index -k 5 "a red star shrinks on a black background"
    Pipeline: cut -f2 captions.tsv | evilm retrieve query --index runs/synthetic/index --json | jq .key
    From an export, int8 text: evilm retrieve query --index runs/synthetic/index-onnx --text-int8 "a blue star grows"
    Moments: evilm retrieve query --index runs/synthetic/moments --per-video 2 "a blue star grows" --contact-sheet m.png
    """
    from evilm_core.retrieval.query import Searcher

    searcher = Searcher(index_dir, checkpoint, precision=precision, exact=exact, threads=threads, per_video=per_video,
                        merge=merge, runtime=runtime, text_int8=text_int8)
    rows, answered = [], 0
    for hits in searcher.stream(_queries(queries or []), k, batch=batch):
        answered += 1
        for hit in hits:
            sys.stdout.write(_line(hit, json_out) + "\n")
        sys.stdout.flush()
        if sheet is not None:
            rows.append(hits)
    if not answered:
        raise EvilmError("no query: stdin held only blank lines")
    if sheet is not None:
        from evilm_core.retrieval.contact_sheet import contact_sheet

        path = contact_sheet(rows, searcher.index.meta.root, sheet)
        console.print(f"contact sheet: {path}", highlight=False)


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="retrieve")
