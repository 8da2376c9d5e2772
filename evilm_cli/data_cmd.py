"""`evilm data synth`, `evilm data check` and `evilm data shards`."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from evilm_cli import options
from evilm_cli.common import emit_json, log, progress, results_console

app = typer.Typer(help="Make and check video-language datasets.", no_args_is_help=True)


@app.command("synth")
def synth(
    out: Path = typer.Argument(..., help="Output directory (videos/ and the JSONL manifests)."),
    videos: int = typer.Option(200, "--videos", min=3, help="Number of clips."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same dataset."),
    frames: int = typer.Option(16, "--frames", min=1, help="Frames per clip."),
    size: int = typer.Option(128, "--size", min=32, help="Frame height and width in pixels (even)."),
    fps: int = typer.Option(8, "--fps", min=1, help="Frames per second."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", min=0.0, max=0.9),
    test_fraction: float = typer.Option(0.2, "--test-fraction", min=0.0, max=0.9),
    workers: int = typer.Option(os.cpu_count() or 1, "--workers", min=1, help="Encoder processes."),
    json_out: bool = options.json_out(),
    long: int = typer.Option(None, "--long", min=1, help="Write this many long videos of scenes instead of clips, "
                             "and moments.jsonl: one moment (video, caption, start, end) per scene."),
    min_scenes: int = typer.Option(5, "--min-scenes", min=1, help="--long: fewest scenes per video."),
    max_scenes: int = typer.Option(12, "--max-scenes", min=1, help="--long: most scenes per video."),
    min_scene_seconds: float = typer.Option(2.0, "--min-scene-seconds", help="--long: shortest scene."),
    max_scene_seconds: float = typer.Option(6.0, "--max-scene-seconds", help="--long: longest scene."),
):
    """Write a synthetic video-language dataset (no download needed).

    Coloured shapes moving over backgrounds, with captions, QA pairs, 5-way multiple-choice
    items and action labels, as canonical JSONL manifests. With --long N: N long videos, each a
    sequence of such scenes, and their moment manifest (docs/retrieval.md, "Moments").

    Example: evilm data synth data/synth --videos 200 --seed 0
    Long videos: evilm data synth data/synth-long --long 10 --size 96
    """
    from evilm_core.prepare.synth import generate

    if long is not None:
        from evilm_core.prepare.synth_long import generate_long

        with progress("synth --long") as update:
            summary = generate_long(out, long, seed=seed, size=size, fps=fps, scenes=(min_scenes, max_scenes),
                                    seconds=(min_scene_seconds, max_scene_seconds), workers=workers, progress=update)
        log.info("wrote %d long videos (%d moments, %.0f s of video) to %s", long, summary["moments"],
                 summary["seconds_of_video"], out)
        if json_out:
            emit_json(summary)
        return
    with progress("synth") as update:
        summary = generate(out, num_videos=videos, seed=seed, frames=frames, size=size, fps=fps,
                           val_fraction=val_fraction, test_fraction=test_fraction, workers=workers,
                           progress=update)
    log.info("wrote %d clips to %s in %.1f s", videos, out, summary.get("seconds", 0.0))
    if json_out:
        emit_json(summary)


@app.command("check")
def check(
    manifest: Path = typer.Argument(..., help="Manifest file (or class-folder directory)."),
    format: str = typer.Option("auto", "--format", help="auto, jsonl, webvid, msrvtt_train, msrvtt_test, "
                               "msrvtt_qa, msvd_qa, tgif_qa, didemo, class_folders; moments: charades_sta, "
                               "activitynet_captions, qvhighlights, didemo_moments."),
    root: Path = typer.Option(None, "--root", help="Where relative video paths resolve (default: the manifest's directory)."),
    frames: int = typer.Option(4, "--frames", min=1, help="Frames sampled per clip, as in training."),
    image_size: int = typer.Option(256, "--image-size", min=16, help="Decoder resize, as in training."),
    workers: int = typer.Option(os.cpu_count() or 1, "--workers", min=1, help="Decode processes."),
    json_out: bool = options.json_out("the report"),
    decoder: str = options.decoder("data check"),
    max_video_bytes: int = options.max_video_bytes(),
):
    """Decode every clip as training would and report problems.

    Counts ok / missing / corrupt / too short and lists each problem file with its reason.
    Exits 0 whatever it finds (it is a report).

    Example: evilm data check data/synth/train.jsonl --json
    """
    from evilm_core.data.records.record import FORMATS
    from evilm_core.prepare.check import check_manifest

    if format != "auto" and format not in FORMATS:
        raise typer.BadParameter(f"unknown format {format!r}; choose auto or one of {', '.join(FORMATS)}")
    with progress("check") as update:
        report = check_manifest(str(manifest), format, str(root) if root else None, frames, image_size,
                                workers, progress=update, decoder=decoder, max_video_bytes=max_video_bytes)
    if json_out:
        emit_json(report.to_json())
        return
    results_console(False).print(f"{report.manifest} ({report.format}): {report.total} videos, {report.ok} ok, "
                                 f"{report.missing} missing, {report.corrupt} corrupt, {report.short} too short"
                                 + (f", {report.duplicate} duplicate keys" if report.duplicate else ""))
    for p in report.problems:
        results_console(False).print(f"  {p['reason']:8s} {p['video']}  {p['detail']}", highlight=False)


@app.command("shards")
def shards(
    input: str = typer.Argument(None, help="A manifest (any --format), or WebDataset tars: a directory of *.tar, "
                                "a brace pattern 'webvid/{00000..00099}.tar' or one tar. Omit with --merge."),
    out: Path = typer.Option(..., "--out", help="The shard directory (created; resumed when it exists)."),
    format: str = typer.Option("auto", "--format", help="Manifest format (see `evilm data check --help`)."),
    root: Path = typer.Option(None, "--root", help="Where a manifest's relative video paths resolve."),
    candidates: int = typer.Option(8, "--candidates", help="Frames stored per clip: the label cache's F candidates."),
    size: int = typer.Option(256, "--size", help="Frames are stored SIZE x SIZE (aspect squashed, as training decodes)."),
    quality: int = typer.Option(95, "--quality", help="JPEG quality (95: mean abs error ~1 level of 255)."),
    samples_per_shard: int = typer.Option(1000, "--samples-per-shard", min=1, help="Videos per shard (manifest input; "
                                          "tar input keeps one output shard per input tar)."),
    workers: int = typer.Option(os.cpu_count() or 1, "--workers", min=1, help="Encoder processes."),
    shard: str = typer.Option(None, "--shard", help="i/n: write only the shards j with j % n == i (one run per node)."),
    merge: bool = typer.Option(False, "--merge", help="Only merge finished shards into the index (after --shard runs)."),
    json_out: bool = options.json_out(),
    decoder: str = options.decoder("data shards"),
    max_video_bytes: int = options.max_video_bytes(),
):
    """Decode every clip once into WebDataset training shards.

    Each clip's F candidate frames (the label cache's) are resized, stored as JPEG with its
    records (captions and task fields), and indexed for random access; `tokenize-train`,
    `label`, `pretrain`, `finetune`, `evaluate` and `retrieve index` then read the shard
    directory wherever they take a manifest (data.train, data.val, --manifest). Re-running the
    same command resumes; undecodable clips are skipped and listed in OUT/skipped.tsv.

    Example: evilm data shards data/synth/train.jsonl --out data/shards/train
    Example: evilm data shards 'webvid/{00000..02499}.tar' --out shards/webvid --shard 0/8
    """
    from evilm_core.prepare.shards import ShardRequest, build_shards, settings_of

    if input is None and not merge:
        raise typer.BadParameter("give INPUT (a manifest or WebDataset tars), or --merge to finish a --shard run")
    req = ShardRequest(input=input, out=str(out), format=format, root=str(root) if root else None,
                       settings=settings_of(candidates, size, quality, decoder, max_video_bytes),
                       samples_per_shard=samples_per_shard,
                       workers=workers, shard=shard, merge=merge)
    with progress("shards") as update:
        summary = build_shards(req, progress=update)
    if json_out:
        emit_json(summary)
        return
    if summary.get("complete"):
        log.info("%s: %d clips, %d written, %d skipped, %d shards in %.1f s", out, summary["clips"],
                 summary["written"], summary["skipped"], summary["shards"], summary["seconds"])


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="data")
