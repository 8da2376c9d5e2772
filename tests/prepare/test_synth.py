"""Synthetic dataset generator: files, decodability, manifests, determinism, text-pixel agreement."""

import json
from pathlib import Path

import decord
import numpy as np
import pytest

from evilm_core.data.video.write import write_mp4
from evilm_core.errors import EvilmError
from evilm_core.prepare import synth

ARGS = dict(num_videos=12, frames=8, size=64, fps=8)
SPLITS = {"train": 9, "val": 1, "test": 2}  # 12 clips, val 0.1 and test 0.2 rounded
QA_KEYS = {"video", "caption", "question", "answer", "label", "split"}
MC_KEYS = {"video", "caption", "options", "answer", "split"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Seed 0 with a pool and in-process (for determinism), and seed 1."""
    root = tmp_path_factory.mktemp("synth")
    calls = []
    summary = synth.generate(root / "a", seed=0, workers=2, progress=lambda *a: calls.append(a), **ARGS)
    synth.generate(root / "b", seed=0, workers=1, **ARGS)
    synth.generate(root / "c", seed=1, workers=2, **ARGS)
    return {"a": root / "a", "b": root / "b", "c": root / "c", "summary": summary, "calls": calls}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def qa_records(root: Path) -> list[dict]:
    return [r for s in SPLITS for r in read_jsonl(root / f"{s}.jsonl")]


def test_files_and_summary(data):
    root, summary = data["a"], data["summary"]
    assert summary["splits"] == SPLITS and summary["videos"] == 12 and summary["seconds"] >= 0
    for split in SPLITS:
        assert Path(summary["manifests"][split]) == root / f"{split}.jsonl"
        assert Path(summary["mc_manifests"][split]).is_file()
    assert len(list((root / "videos").glob("*.mp4"))) == 12
    assert not list(root.rglob(".*tmp"))  # no leftover temporary files
    meta = json.loads((root / "synth.json").read_text())
    assert meta["params"]["seed"] == 0 and meta["splits"] == SPLITS
    assert set(meta["vocab"]["colors"]) == set(synth.COLORS)
    assert data["calls"][-1] == (12, 12) and len(data["calls"]) == 12


def test_every_clip_decodes(data):
    for rec in qa_records(data["a"]):
        vr = decord.VideoReader(str(data["a"] / rec["video"]))
        assert len(vr) == ARGS["frames"]
        assert vr[0].shape == (64, 64, 3)


def test_manifest_keys_and_splits(data):
    for split, count in SPLITS.items():
        qa = read_jsonl(data["a"] / f"{split}.jsonl")
        mc = read_jsonl(data["a"] / f"mc_{split}.jsonl")
        assert len(qa) == len(mc) == count
        assert all(set(r) == QA_KEYS and r["split"] == split for r in qa)
        assert all(set(r) == MC_KEYS and r["split"] == split for r in mc)
        assert [r["video"] for r in qa] == [r["video"] for r in mc]
        assert len({r["caption"] for r in qa}) == count  # distinct retrieval targets
    videos = [r["video"] for r in qa_records(data["a"])]
    assert len(set(videos)) == 12 and all(v.startswith("videos/") for v in videos)


def test_same_seed_same_bytes_any_worker_count(data):
    a, b = data["a"], data["b"]
    names = [f"{s}.jsonl" for s in SPLITS] + [f"mc_{s}.jsonl" for s in SPLITS]
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes()
    for path in sorted((a / "videos").glob("*.mp4")):
        assert path.read_bytes() == (b / "videos" / path.name).read_bytes()


def test_different_seed_different_captions(data):
    caps_a = [r["caption"] for r in qa_records(data["a"])]
    caps_c = [r["caption"] for r in qa_records(data["c"])]
    assert caps_a != caps_c


def test_multiple_choice(data):
    for split in SPLITS:
        for rec in read_jsonl(data["a"] / f"mc_{split}.jsonl"):
            options = rec["options"]
            assert len(options) == 5 and len(set(options)) == 5
            assert options[rec["answer"]] == rec["caption"]
            true = _attributes(rec["caption"])
            for wrong in options[:rec["answer"]] + options[rec["answer"] + 1:]:
                # a distractor names as many shapes and changes one or two attributes
                other = _attributes(wrong)
                assert len(other) == len(true)
                assert 1 <= sum(x != y for x, y in zip(other, true)) <= 2


def _attributes(caption: str) -> list[str]:
    """[background, colour, shape, motion, (colour, shape, motion)] parsed from a caption."""
    shapes_part, background = caption.rsplit(" on a ", 1)
    phrases = {p: m for m, (p, _) in synth.MOTIONS.items()}
    out = [background]
    for part in shapes_part.split(" while "):
        _, color, shape, phrase = part.split(" ", 3)
        out += [color, shape, phrases[phrase]]
    return out


def _words(caption: str) -> tuple[list[str], list[str], str]:
    shapes_part, background = caption.rsplit(" on a ", 1)
    words = shapes_part.split()
    return [w for w in words if w in synth.COLORS], [w for w in words if w in synth.SHAPES], background


def test_texts_match_scene():
    clips = synth.plan(ARGS["num_videos"], seed=0, frames=8, size=64)
    for clip in clips:
        scene = clip.scene
        colors, shapes, background = _words(clip.caption)
        assert colors == [o.color for o in scene.objects]
        assert shapes == [o.shape for o in scene.objects]
        assert background == f"{scene.background} background"
        assert clip.label == synth.MOTIONS[scene.objects[0].motion][1]
        assert clip.options[clip.answer_index] == clip.caption
        # every drawn shape is visible in every frame, and nothing else is drawn
        video = synth.render(scene)
        for o in scene.objects:
            hits = (video == synth.COLORS[o.color]).all(-1).sum(axis=(1, 2))
            assert (hits > 20).all(), (clip.caption, o)
        drawn = {tuple(c) for c in video.reshape(-1, 3)}
        assert drawn == {synth.BACKGROUNDS[scene.background]} | {synth.COLORS[o.color] for o in scene.objects}


def test_answers_are_true():
    for clip in synth.plan(60, seed=3, frames=8, size=64):
        objs, q, a = clip.scene.objects, clip.question, clip.answer
        if q == "what color is the background?":
            assert a == clip.scene.background
        elif q == "how many shapes are there?":
            assert a == ("one", "two")[len(objs) - 1]
        elif q.startswith("how does the "):
            color, shape = q.split()[3:5]
            assert [o.motion for o in objs if (o.color, o.shape) == (color, shape)] == [a]
        elif q.startswith("what color is the "):
            assert a in {o.color for o in objs}
        else:
            assert a in {o.shape for o in objs}


def test_named_colours_are_in_decoded_pixels(data):
    for rec in qa_records(data["a"]):
        frame = decord.VideoReader(str(data["a"] / rec["video"]))[4].asnumpy().astype(int)
        colors, _, background = _words(rec["caption"])
        for name in colors:
            dist = np.abs(frame - np.array(synth.COLORS[name])).max(-1)
            assert (dist < 50).sum() >= 15, (rec["caption"], name)  # lossy H.264: approximate
        bg = np.array(synth.BACKGROUNDS[background.split()[0]])
        assert (np.abs(frame - bg).max(-1) < 30).mean() > 0.3


def test_captions_unique_within_split_at_scale():
    clips = synth.plan(400, seed=0)
    for split in ("train", "val", "test"):
        keys = [synth.scene_key(c.scene) for c in clips if c.split == split]
        assert len(keys) == len(set(keys))


def test_motion_is_visible():
    for clip in synth.plan(40, seed=0, frames=8, size=64):
        for o in clip.scene.objects:
            moved = np.hypot(o.end[0] - o.start[0], o.end[1] - o.start[1])
            scaled = abs(o.radius[1] - o.radius[0])
            assert moved >= 64 / 4 - 1e-6 or scaled >= 0.5 * max(o.radius)


@pytest.mark.parametrize("kwargs", [
    dict(num_videos=0), dict(size=63), dict(size=16), dict(frames=0),
    dict(num_videos=2, val_fraction=0.5, test_fraction=0.5), dict(test_fraction=1.5),
])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(EvilmError):
        synth.generate(tmp_path, **{"num_videos": 4, **kwargs})


def test_write_mp4_rejects_odd_sizes(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_mp4(tmp_path / "x.mp4", np.zeros((2, 33, 32, 3), np.uint8))
    with pytest.raises(ValueError):
        write_mp4(tmp_path / "x.mp4", np.zeros((2, 32, 32, 3), np.float32))
    assert not list(tmp_path.iterdir())
