"""The moment datasets' readers (formats.py), each on a tiny file in its published layout, their
detection, the skipped-and-counted unusable times, and evilm's own moment manifest's errors."""

from __future__ import annotations

import json
import logging

import pytest

from evilm_core.data.records.manifest import ClipRecord, detect_format, read_manifest
from evilm_core.errors import ManifestError
from tests.data.records.test_manifest import read_both, write
from tests.helpers.cli import run_evilm


def moment(video, caption, start, end, split=None) -> ClipRecord:
    return ClipRecord(video=video, caption=caption, start=start, end=end, split=split)


def test_charades_sta(tmp_path):
    path = write(tmp_path / "charades_sta_test.txt",
                 "3MSZA 24.3 30.4##person turn a light on.\n\nAO8RW 0.0 6.9##a person is putting a book on a shelf.\n")
    assert read_both(path, "charades_sta") == [
        moment("3MSZA.mp4", "person turn a light on.", 24.3, 30.4, "test"),
        moment("AO8RW.mp4", "a person is putting a book on a shelf.", 0.0, 6.9, "test"),
    ]
    bad = write(tmp_path / "bad.txt", "3MSZA 24.3 30.4##fine\nnot a charades line\n")
    with pytest.raises(ManifestError, match=r"bad.txt:2: expected a Charades-STA line"):
        read_manifest(bad, "charades_sta")


def test_activitynet_captions(tmp_path):
    data = {"v_QOlSCBRmfWY": {"duration": 82.73, "timestamps": [[0.83, 19.86], [17.37, 60.81]],
                              "sentences": ["A young woman is seen standing.", "  She then begins to dance."]},
            "v_ehGHCYKzyZ8": {"duration": 61.72, "timestamps": [[0, 61.72]], "sentences": ["A man plays."]}}
    path = write(tmp_path / "val_1.json", json.dumps(data))
    assert read_both(path, "activitynet_captions") == [
        moment("v_QOlSCBRmfWY.mp4", "A young woman is seen standing.", 0.83, 19.86, "val"),
        moment("v_QOlSCBRmfWY.mp4", "She then begins to dance.", 17.37, 60.81, "val"),
        moment("v_ehGHCYKzyZ8.mp4", "A man plays.", 0.0, 61.72, "val"),
    ]
    data["v_ehGHCYKzyZ8"]["sentences"].append("one more")
    with pytest.raises(ManifestError, match=r"video v_ehGHCYKzyZ8: 1 timestamps but 2 sentences"):
        read_manifest(write(tmp_path / "train.json", json.dumps(data)))


def test_qvhighlights_one_record_per_relevant_window(tmp_path):
    line = {"qid": 8737, "query": "A family is playing basketball together on a green court outside.",
            "duration": 126, "vid": "bP5KfdFJzC4_660.0_810.0", "relevant_windows": [[96, 114], [120, 126]],
            "relevant_clip_ids": [48, 49], "saliency_scores": [[4, 1, 1], [4, 1, 1]]}
    path = write(tmp_path / "highlight_val_release.jsonl", json.dumps(line) + "\n")
    caption = line["query"]
    assert read_both(path, "qvhighlights") == [moment("bP5KfdFJzC4_660.0_810.0.mp4", caption, 96.0, 114.0, "val"),
                                               moment("bP5KfdFJzC4_660.0_810.0.mp4", caption, 120.0, 126.0, "val")]
    test_split = write(tmp_path / "highlight_test_release.jsonl",
                       json.dumps({"qid": 1, "query": "x", "duration": 150, "vid": "a"}) + "\n")
    with pytest.raises(ManifestError, match="missing key 'relevant_windows'.*the test split has no windows"):
        read_manifest(test_split)


def test_didemo_moments_from_five_second_segments(tmp_path):
    data = [{"annotation_id": 1, "description": "the girl walks away", "video": "10015567@N08_3655084291.mov",
             "times": [[2, 2], [2, 3], [2, 2], [5, 5]], "num_segments": 6, "download_link": "..."}]
    path = write(tmp_path / "test_data.json", json.dumps(data))
    assert detect_format(path) == "didemo"  # the paragraph reader's; moments are asked for by name
    assert read_manifest(path, "didemo_moments") == [
        moment("10015567@N08_3655084291.mov", "the girl walks away", 10.0, 15.0, "test"),
        moment("10015567@N08_3655084291.mov", "the girl walks away", 10.0, 20.0, "test"),
        moment("10015567@N08_3655084291.mov", "the girl walks away", 25.0, 30.0, "test"),
    ]


def test_unusable_published_times_are_skipped_and_counted(tmp_path, caplog):
    path = write(tmp_path / "charades_sta_train.txt",
                 "A 5.0 2.0##backwards\nB 1.0 3.0##fine\nC x 3.0##not a number\nD -1 2##before the start\n")
    with caplog.at_level(logging.WARNING, logger="evilm.data"):
        records = read_manifest(path)
    assert [r.video for r in records] == ["B.mp4"]
    assert "3 of 4 moments skipped" in caplog.text and "charades_sta_train.txt:1" in caplog.text


def test_evilm_moment_manifest_errors_name_the_line(tmp_path):
    cases = [({"start": 5, "end": 2}, "starts at 5 s, not before its end 2 s"),
             ({"start": 1}, "needs both 'start' and 'end'"),
             ({"start": "1", "end": 2}, "key 'start' must be a number of seconds"),
             ({"start": -1, "end": 2}, "before the video begins")]
    for times, message in cases:
        path = write(tmp_path / "m.jsonl", json.dumps({"video": "a.mp4", "caption": "x", **times}) + "\n")
        with pytest.raises(ManifestError, match=message):
            read_manifest(path)
    proc = run_evilm("data", "check", path, check=False)  # as a user meets it
    assert proc.returncode == 2 and "m.jsonl:1" in proc.stderr and "Traceback" not in proc.stderr
