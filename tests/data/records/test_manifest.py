"""Manifest readers: each public format as published (tiny fixtures), detection, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from evilm_core.data.records.manifest import (
    FORMATS,
    ClipRecord,
    detect_format,
    read_manifest,
    resolve_video,
    write_jsonl,
)
from evilm_core.errors import EvilmError, ManifestError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def read_both(path: Path, fmt: str) -> list[ClipRecord]:
    """Read with the format named and with detection; both must agree and detect `fmt`."""
    assert detect_format(path) == fmt
    records = read_manifest(path, fmt)
    assert read_manifest(path) == records
    return records


# --------------------------------------------------------------------------- formats


def test_jsonl(tmp_path):
    path = write(tmp_path / "train.jsonl",
                 '{"video": "a.mp4", "caption": "a dog runs"}\n\n'
                 '{"video": "/abs/b.mp4", "question": "what?", "answer": 1, "options": ["x", "y"], "split": "val"}\n')
    records = read_both(path, "jsonl")
    assert records == [
        ClipRecord(video="a.mp4", caption="a dog runs"),
        ClipRecord(video="/abs/b.mp4", question="what?", answer=1, options=["x", "y"], split="val"),
    ]


def test_webvid(tmp_path):
    path = write(tmp_path / "results_2M_val.csv",
                 "videoid,contentUrl,duration,page_dir,name\n"
                 "1066674784,https://ak.picdn.net/a.mp4,PT00H00M22S,1037_1045,  Aerial shot of a city, at dusk \n"
                 '31353427,https://ak.picdn.net/b.mp4,PT00H00M15S,006001_006050,"Girl smiles, waves"\n')
    records = read_both(path, "webvid")
    assert records == [
        ClipRecord(video="1037_1045/1066674784.mp4", caption="Aerial shot of a city", split="val"),
        ClipRecord(video="006001_006050/31353427.mp4", caption="Girl smiles, waves", split="val"),
    ]


def test_webvid_keeps_long_caption_and_train_split(tmp_path):
    long = "word " * 120
    path = write(tmp_path / "results_2M_train.csv",
                 f"videoid,contentUrl,duration,page_dir,name\n1,u,PT1S,p,{long}\n")
    (record,) = read_manifest(path)
    assert record.caption == long.strip() and record.split == "train"


def test_msrvtt_train(tmp_path):
    data = {
        "info": {"year": "2016"},
        "videos": [{"id": 0, "video_id": "video0", "category": 9, "split": "train"},
                   {"id": 1, "video_id": "video6513", "category": 2, "split": "validate"}],
        "sentences": [{"sen_id": 0, "video_id": "video0", "caption": "a car drives"},
                      {"sen_id": 1, "video_id": "video6513", "caption": " a man talks "},
                      {"sen_id": 2, "video_id": "video0", "caption": "a red car"}],
    }
    path = write(tmp_path / "train_val_videodatainfo.json", json.dumps(data))
    records = read_both(path, "msrvtt_train")
    assert records == [
        ClipRecord(video="video0.mp4", caption="a car drives", split="train"),
        ClipRecord(video="video6513.mp4", caption="a man talks", split="val"),
        ClipRecord(video="video0.mp4", caption="a red car", split="train"),
    ]


def test_msrvtt_train_pretty_printed(tmp_path):
    data = {"videos": [{"video_id": "video1", "split": "test"}],
            "sentences": [{"video_id": "video1", "caption": "x", "sen_id": 5}]}
    path = write(tmp_path / "MSRVTT_data.json", json.dumps(data, indent=2))
    assert read_both(path, "msrvtt_train") == [ClipRecord(video="video1.mp4", caption="x", split="test")]


def test_msrvtt_test(tmp_path):
    path = write(tmp_path / "MSRVTT_JSFUSION_test.csv",
                 "key,vid_key,video_id,sentence\n"
                 "ret0,msr7579,video7579,a girl wearing red top and black trouser is putting a sweater on a dog\n"
                 "ret1,msr7725,video7725,young people sit around the edges of a room clapping\n")
    records = read_both(path, "msrvtt_test")
    assert [r.video for r in records] == ["video7579.mp4", "video7725.mp4"]
    assert records[1].caption == "young people sit around the edges of a room clapping"
    assert {r.split for r in records} == {"test"}


def test_msrvtt_qa(tmp_path):
    qa = [{"answer": "clothes", "id": 0, "question": "what is a person showing?", "video_id": 0},
          {"answer": "man", "id": 1, "question": "who is talking?", "video_id": 6513}]
    path = write(tmp_path / "MSRVTT-QA" / "val_qa.json", json.dumps(qa))
    records = read_both(path, "msrvtt_qa")
    assert records == [
        ClipRecord(video="video0.mp4", question="what is a person showing?", answer="clothes", split="val"),
        ClipRecord(video="video6513.mp4", question="who is talking?", answer="man", split="val"),
    ]


def test_msvd_qa_without_mapping(tmp_path):
    qa = [{"answer": "food", "id": 0, "question": "what is being eaten?", "video_id": 1}]
    path = write(tmp_path / "MSVD-QA" / "train_qa.json", json.dumps(qa))
    assert read_both(path, "msvd_qa") == [
        ClipRecord(video="vid1.avi", question="what is being eaten?", answer="food", split="train")]


def test_msvd_qa_with_mapping_one_dir_up(tmp_path):
    write(tmp_path / "youtube_mapping.txt", "-4wsuPCjDBc_5_15 vid1\n-7KMZQEsJW4_205_208 vid2\n")
    qa = [{"answer": "cat", "id": 7, "question": "what plays?", "video_id": 2},
          {"answer": "food", "id": 8, "question": "what is eaten?", "video_id": 1}]
    path = write(tmp_path / "qa" / "test_qa.json", json.dumps(qa))  # no "msvd" in the path
    records = read_both(path, "msvd_qa")
    assert [r.video for r in records] == ["-7KMZQEsJW4_205_208.avi", "-4wsuPCjDBc_5_15.avi"]
    assert records[0].answer == "cat" and records[0].split == "test"


def test_msvd_qa_id_missing_from_mapping(tmp_path):
    write(tmp_path / "youtube_mapping.txt", "-4wsuPCjDBc_5_15 vid1\n")
    path = write(tmp_path / "test_qa.json", json.dumps([{"question": "q", "answer": "a", "video_id": 9}]))
    with pytest.raises(ManifestError, match=r"item 0.*vid9.*youtube_mapping\.txt"):
        read_manifest(path, "msvd_qa")


def test_tgif_multiple_choice(tmp_path):
    path = write(tmp_path / "Train_action_question.csv",
                 "gif_name\tquestion\ta1\ta2\ta3\ta4\ta5\tanswer\tvid_id\tkey\n"
                 "tumblr_nqc2mbmU2J1uxhtnwo1_400\tWhat does the woman do 4 times ?\tflick\tdo gymnastic\t"
                 "chew food\tshake hips left and right\tpat the back of the other man\t2\tACTION1\t5\n"
                 "tumblr_abc_250\tWhat does the man do ?\tjump\tsit\trun\tclap\tnod\t0\tACTION2\t6\n")
    records = read_both(path, "tgif_qa")
    assert records[0] == ClipRecord(
        video="tumblr_nqc2mbmU2J1uxhtnwo1_400.mp4", question="What does the woman do 4 times ?", answer=2,
        options=["flick", "do gymnastic", "chew food", "shake hips left and right", "pat the back of the other man"],
        split="train")
    assert records[1].answer == 0 and records[1].options[4] == "nod"


def test_tgif_frameqa_and_count(tmp_path):
    frameqa = write(tmp_path / "Test_frameqa_question.csv",
                    "gif_name\tquestion\tanswer\ttype\tvid_id\tkey\tdescription\n"
                    "tumblr_nq5474KbMK1slwrsuo1_400\thow many dogs is playing tug of war ?\ttwo\t1\t"
                    "FRAMEQA3\t25889\ttwo dogs playing tug of war .\n")
    (record,) = read_both(frameqa, "tgif_qa")
    assert record == ClipRecord(video="tumblr_nq5474KbMK1slwrsuo1_400.mp4",
                                question="how many dogs is playing tug of war ?", answer="two", split="test")
    count = write(tmp_path / "Train_count_question.csv",
                  "gif_name\tquestion\tanswer\tvid_id\tkey\n"
                  "tumblr_nd53vw6Crc1r7na6zo1_400\tHow many times does the man wave his head ?\t5\tCOUNT2\t16\n")
    (record,) = read_both(count, "tgif_qa")
    assert record.answer == "5" and record.options is None and record.split == "train"


def test_tgif_bad_answer_index(tmp_path):
    path = write(tmp_path / "Test_transition_question.csv",
                 "gif_name\tquestion\ta1\ta2\ta3\ta4\ta5\tanswer\tvid_id\tkey\n"
                 "g\tq\ta\tb\tc\td\te\tseven\tTRANS1\t1\n")
    with pytest.raises(ManifestError, match=r"Test_transition_question\.csv:2.*'answer'"):
        read_manifest(path)


def test_didemo_paragraphs(tmp_path):
    data = [
        {"annotation_id": 1, "description": "a dog runs.", "video": "10015567@N08_3655084291.mov",
         "times": [[0, 0], [1, 1]], "num_segments": 6},
        {"annotation_id": 2, "description": "a cat sits.", "video": "1001@N02_555.mp4", "times": [[2, 3]]},
        {"annotation_id": 3, "description": " the dog stops. ", "video": "10015567@N08_3655084291.mov",
         "times": [[4, 4]]},
    ]
    path = write(tmp_path / "test_data.json", json.dumps(data))
    records = read_both(path, "didemo")
    assert records == [
        ClipRecord(video="10015567@N08_3655084291.mov", caption="a dog runs. the dog stops.", split="test"),
        ClipRecord(video="1001@N02_555.mp4", caption="a cat sits.", split="test"),
    ]


def test_class_folders_flat(tmp_path):
    root = tmp_path / "hmdb51"
    for rel in ("kiss/b.avi", "kiss/a.avi", "brush_hair/c.AVI", "brush_hair/notes.txt", "readme.mp4"):
        write(root / rel, "")
    records = read_both(root, "class_folders")
    assert records == [
        ClipRecord(video="brush_hair/c.AVI", label="brush_hair"),
        ClipRecord(video="kiss/a.avi", label="kiss"),
        ClipRecord(video="kiss/b.avi", label="kiss"),
    ]
    assert resolve_video(records[0], str(root)) == root / "brush_hair" / "c.AVI"


def test_class_folders_kinetics_splits(tmp_path):
    root = tmp_path / "k400"
    for rel in ("train/abseiling/x.mp4", "train/zumba/y.mkv", "val/abseiling/z.webm"):
        write(root / rel, "")
    records = read_both(root, "class_folders")
    assert records == [
        ClipRecord(video="train/abseiling/x.mp4", label="abseiling", split="train"),
        ClipRecord(video="train/zumba/y.mkv", label="zumba", split="train"),
        ClipRecord(video="val/abseiling/z.webm", label="abseiling", split="val"),
    ]


# --------------------------------------------------------------------------- round trip, paths


def test_write_jsonl_round_trip(tmp_path):
    records = [ClipRecord(video="a.mp4", caption="c"),
               ClipRecord(video="b.mp4", question="q", answer=3, options=["1", "2", "3", "4"], split="test"),
               ClipRecord(video="c.avi", label="kiss", split="train"),
               ClipRecord(video="d.mp4", question="q", answer="naïve")]
    path = tmp_path / "out" / "all.jsonl"
    write_jsonl(records, path)
    assert read_manifest(path) == records
    assert json.loads(path.read_text(encoding="utf-8").splitlines()[0]) == {"video": "a.mp4", "caption": "c"}
    assert [p.name for p in path.parent.iterdir()] == ["all.jsonl"]  # no temp file left behind


def test_to_json_drops_none():
    assert ClipRecord(video="v.mp4", answer=0).to_json() == {"video": "v.mp4", "answer": 0}


def test_resolve_video(tmp_path, monkeypatch):
    assert resolve_video("/data/x.mp4", "/elsewhere") == Path("/data/x.mp4")
    assert resolve_video(ClipRecord(video="a/b.mp4"), str(tmp_path)) == tmp_path / "a" / "b.mp4"
    monkeypatch.chdir(tmp_path)
    assert resolve_video("c.mp4", None) == Path(os.getcwd()) / "c.mp4"


# --------------------------------------------------------------------------- errors


def test_webvid_missing_column(tmp_path):
    path = write(tmp_path / "results_2M_train.csv", "videoid,contentUrl,duration,name\n1,u,d,cap\n")
    with pytest.raises(ManifestError) as err:
        read_manifest(path, "webvid")
    message = str(err.value)
    assert "results_2M_train.csv" in message and "'page_dir'" in message
    assert "videoid, contentUrl, duration, page_dir, name" in message


def test_malformed_json_line(tmp_path):
    path = write(tmp_path / "m.jsonl", '{"video": "a.mp4"}\n\n{"video": "b.mp4", \n')
    with pytest.raises(ManifestError, match=r"m\.jsonl:3: not valid JSON"):
        read_manifest(path)


def test_unknown_key_in_jsonl(tmp_path):
    path = write(tmp_path / "m.jsonl", '{"video": "a.mp4"}\n{"video": "b.mp4", "captoin": "x"}\n')
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: unknown key 'captoin'; expected keys: video, caption"):
        read_manifest(path)


def test_meta_is_the_one_open_field_and_the_others_stay_strict(tmp_path):
    """`meta` carries a source's provenance (video2dataset's url, status, ...) as any JSON object;
    it must be an object, and a misspelt key elsewhere is still an error."""
    path = write(tmp_path / "m.jsonl", '{"video": "a.mp4", "meta": {"url": "https://x/a.mp4", "status": "success", '
                                       '"size": [596, 336]}}\n')
    [record] = read_manifest(path)
    assert record.meta == {"url": "https://x/a.mp4", "status": "success", "size": [596, 336]}
    write_jsonl([record], tmp_path / "out.jsonl")
    assert read_manifest(tmp_path / "out.jsonl") == [record]
    with pytest.raises(ManifestError, match=r"f:1: key 'meta' must be an object"):
        ClipRecord.from_json({"video": "v", "meta": "https://x"}, "f:1")
    with pytest.raises(ManifestError, match=r"f:2: unknown key 'url'"):
        ClipRecord.from_json({"video": "v", "url": "https://x"}, "f:2")


def test_missing_video_key_and_bad_type(tmp_path):
    with pytest.raises(ManifestError, match=r"f:1: missing key 'video'"):
        ClipRecord.from_json({"caption": "x"}, "f:1")
    with pytest.raises(ManifestError, match=r"f:2: key 'options'"):
        ClipRecord.from_json({"video": "v", "options": "abc"}, "f:2")


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    for call in (lambda: read_manifest(missing), lambda: read_manifest(missing, "webvid"),
                 lambda: detect_format(missing)):
        with pytest.raises(ManifestError, match="nope.jsonl"):
            call()


@pytest.mark.parametrize("name,text,fmt", [
    ("empty.jsonl", "\n\n", "auto"),
    ("empty.csv", "", "auto"),
    ("results_2M_val.csv", "videoid,contentUrl,duration,page_dir,name\n", "auto"),
    ("train_qa.json", "[]", "msrvtt_qa"),
])
def test_empty_manifest(tmp_path, name, text, fmt):
    path = write(tmp_path / name, text)
    with pytest.raises(ManifestError, match="empty manifest"):
        read_manifest(path, fmt)


def test_empty_class_folder(tmp_path):
    (tmp_path / "kiss").mkdir()
    with pytest.raises(ManifestError, match="empty manifest"):
        read_manifest(tmp_path)


def test_unknown_format_lists_formats(tmp_path):
    path = write(tmp_path / "notes.txt", "hello world\n")
    with pytest.raises(ManifestError) as err:
        detect_format(path)
    assert all(name in str(err.value) for name in FORMATS)
    with pytest.raises(ManifestError, match="unknown manifest format 'csv'.*class_folders"):
        read_manifest(path, "csv")


def test_ambiguous_qa_json_asks_for_format(tmp_path):
    path = write(tmp_path / "train_qa.json", json.dumps([{"question": "q", "answer": "a", "video_id": 1}]))
    with pytest.raises(ManifestError, match="msrvtt_qa.*msvd_qa"):
        detect_format(path)
    assert read_manifest(path, "msrvtt_qa")[0].video == "video1.mp4"


def test_json_item_missing_key(tmp_path):
    path = write(tmp_path / "msrvtt" / "test_qa.json", json.dumps([{"question": "q", "video_id": 1}]))
    with pytest.raises(ManifestError, match=r"test_qa\.json item 0: missing key 'answer'; expected keys: question"):
        read_manifest(path)


def test_manifest_error_is_a_user_error():
    assert issubclass(ManifestError, EvilmError)


def test_msrvtt_multiple_choice_tsv_reads_as_published(tmp_path):
    path = tmp_path / "MSR_MC_test.csv"
    path.write_text("key\tvid_key\tvideo_id\ta1\ta2\ta3\ta4\ta5\tanswer\n"
                    "msr0\tmsr7010\tvideo7010\ta man sings\ta dog runs\ta car\ta cat\ta cook\t1\n")
    [record] = read_manifest(path)
    assert record.video == "video7010.mp4" and record.answer == 1 and record.options[1] == "a dog runs"
