"""`evilm data synth OUT --long N`: long videos of scenes, their moment manifest and long.json."""

from __future__ import annotations

import json

from evilm_core.data.records.manifest import read_manifest
from evilm_core.data.video.read import read_times
from evilm_core.data.windows import probe
from evilm_core.prepare.synth import COLORS
from evilm_core.prepare.synth_long import generate_long
from tests.helpers.cli import last_json, run_evilm


def test_long_videos_their_scenes_and_moments(long_dir, tmp_path):
    out = tmp_path / "cli"
    summary = last_json(run_evilm("data", "synth", out, "--long", "3", "--size", "64", "--fps", "8", "--min-scenes",
                                  "3", "--max-scenes", "4", "--min-scene-seconds", "1", "--max-scene-seconds", "3",
                                  "--workers", "2", "--json").stdout)
    assert summary["videos"] == 3 and summary["moments"] == len(read_manifest(out / "moments.jsonl"))
    for name in ("moments.jsonl", "long.json", *(f"videos/long_0000{i}.mp4" for i in range(3))):
        assert (out / name).read_bytes() == (long_dir / name).read_bytes(), name  # same seed, 1 or 2 workers
    meta = json.loads((out / "long.json").read_text())
    records = read_manifest(out / "moments.jsonl")
    for video in meta["videos"]:
        scenes = video["scenes"]
        assert 3 <= len(scenes) <= 4 and scenes[0]["start"] == 0 and scenes[-1]["end"] == video["duration"]
        assert all(a["end"] == b["start"] for a, b in zip(scenes, scenes[1:]))  # cut one after the other
        assert all(1.0 <= s["end"] - s["start"] <= 3.0 for s in scenes)
        assert len({s["caption"] for s in scenes}) == len(scenes)  # one true moment per caption in its video
        frames, fps = probe(out / video["video"], "pyav")
        assert frames / fps == video["duration"]
        mine = [(r.caption, r.start, r.end) for r in records if r.video == video["video"]]
        assert mine == [(s["caption"], s["start"], s["end"]) for s in scenes]
        # the middle of each scene shows its first shape's colour
        clip = read_times(out / video["video"], [(s["start"] + s["end"]) / 2 for s in scenes], 64)
        for scene, frame in zip(scenes, clip.frames):
            colour = next(c for c in COLORS if f"a {c} " in scene["caption"].split(" while ")[0])
            assert (abs(frame.astype(int) - COLORS[colour]).sum(-1) < 60).any(), scene["caption"]


def test_bad_long_arguments(tmp_path):
    proc = run_evilm("data", "synth", tmp_path / "x", "--long", "1", "--min-scenes", "5", "--max-scenes", "3",
                     check=False)
    assert proc.returncode == 2 and "need 1 <= min <= max" in proc.stderr and "Traceback" not in proc.stderr
    summary = generate_long(tmp_path / "y", 1, size=32, scenes=(1, 1), seconds=(0.5, 0.5), workers=1)
    assert summary["moments"] == 1 and summary["seconds_of_video"] == 0.5
