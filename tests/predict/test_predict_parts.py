"""The pieces of `evilm predict` a CLI run does not isolate: the video side runs once per clip
for all its items, and --out recovery keeps whole clips only."""

from __future__ import annotations

import json

import torch

from evilm_core.predict.heads import Head
from evilm_core.predict.output import ResultFile, tsv_lines
from evilm_core.predict.run import aligned_todo
from tests.helpers.models import clips, texts, tiny_model


def test_a_clip_is_encoded_once_for_all_its_questions_and_options():
    net = tiny_model().eval()
    net.heads["qa"] = torch.nn.Linear(net.cfg.fusion_dim, 5)
    pixels = clips(2)
    ids, mask = texts(4)
    calls = []
    encode = net.video.forward
    net.video.forward = lambda x: calls.append(len(x)) or encode(x)
    pairs = [(ids[:3], mask[:3]), (ids[3:], mask[3:])]  # clip 0: 3 texts, clip 1: 1
    with torch.no_grad():
        qa = Head("qa").compute(net, {"pixels": pixels, "pairs": pairs})["scores"]
        mc = Head("mc").compute(net, {"pixels": pixels, "pairs": pairs})["scores"]
        assert calls == [2, 2]  # one pass over both clips per batch, never per text
        for clip, (rows, n) in enumerate(((slice(0, 3), 3), (slice(3, 4), 1))):
            alone = net(pixels[clip:clip + 1].expand(n, -1, -1, -1, -1), ids[rows], mask[rows])["cls"]
            torch.testing.assert_close(qa[clip], net.heads["qa"](alone).softmax(-1), atol=1e-5, rtol=1e-4)
            vtm = net.heads["vtm"](alone)
            torch.testing.assert_close(mc[clip], vtm[:, 1] - vtm[:, 0], atol=1e-5, rtol=1e-4)


def _line(key: str, n: int) -> str:
    return json.dumps({"key": key, "question": f"q{n}", "answers": [{"answer": "a", "prob": 0.5}]}) + "\n"


def test_out_recovery_keeps_complete_clips_and_cuts_the_rest(tmp_path):
    path = tmp_path / "out.jsonl"
    error = json.dumps({"key": "e.mp4", "error": "corrupt", "detail": "x"}) + "\n"  # one line for all its items
    complete = _line("a.mp4", 0) + _line("a.mp4", 1) + error + _line("b.mp4", 0) + _line("b.mp4", 1)
    path.write_text(complete + _line("c.mp4", 0) + _line("c.mp4", 1)[:15])  # c: one line of 2, then a torn one
    result = ResultFile(path, {"a.mp4": 2, "e.mp4": 2, "b.mp4": 2, "c.mp4": 2})
    result.close()
    assert result.done == {"a.mp4", "e.mp4", "b.mp4"} and path.read_text() == complete


def test_batches_stay_aligned_to_the_input():
    class C:
        def __init__(self, key):
            self.record = type("R", (), {"video": key})

    todo = aligned_todo([C(k) for k in "abcdefg"], {"a", "b", "c", "d", "e"}, batch_size=3)
    assert [c.record.video for c in todo] == ["d", "e", "f", "g"]  # batch d-f whole, then g


def test_tsv_lines_rank_answers_and_options():
    assert tsv_lines({"key": "k", "question": "q?", "answers": [{"answer": "x", "prob": 0.75}]}) == \
        ["k\tq?\t1\tx\t0.750000"]
    assert tsv_lines({"key": "k", "options": ["o1", "o2"], "scores": [-1.0, 2.0], "chosen": 1, "answer": "o2"}) == \
        ["k\t\t1\to2\t2.000000", "k\t\t2\to1\t-1.000000"]
    assert tsv_lines({"key": "k", "error": "corrupt", "detail": "bad\tdata"}) == ["k\t\terror\tcorrupt\tbad\\tdata"]
