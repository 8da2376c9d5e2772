"""The serve API through the real ASGI app (Starlette's TestClient, httpx): search equals
`retrieve query` for every test caption, POST batches, similar clips from stored embeddings,
clip metadata, frames and range requests, traversal refused, the token, limits, index loading."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
from fastapi.testclient import TestClient

from evilm_core.data.records.manifest import read_manifest
from evilm_core.serve.app import create_app
from evilm_core.serve.service import ServeConfig, Service
from evilm_core.settings import RunSettings
from tests.helpers.cli import in_process
from tests.helpers.predict import write_checkpoints
from tests.retrieval.test_retrieve_cli import query_lines


def client_for(index, **config) -> TestClient:
    service = Service(ServeConfig({"test": str(index)}, RunSettings(threads=1), **config))
    return TestClient(create_app(service))


def ready(client: TestClient) -> TestClient:
    deadline = time.monotonic() + 120
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.1)
    return client


@pytest.fixture(scope="module")
def api(served_index):
    with client_for(served_index) as client:
        yield ready(client)


def test_search_equals_retrieve_query_for_every_caption(api, served_index, synth_dir):
    captions = [r.caption for r in read_manifest(synth_dir / "test.jsonl")]
    k = len(set(captions))
    cli = {}
    for line in query_lines(served_index, "-k", k, "--json", stdin="".join(c + "\n" for c in captions)):
        hit = json.loads(line)
        cli.setdefault(hit["query"], []).append((hit["key"], hit["score"]))
    for caption in captions:  # the same clips in the same order; scores to float32's last digits (the CLI
        body = api.get("/api/search", params={"q": caption, "k": k}).json()  # embeds all captions in one batch)
        assert [r["key"] for r in body["results"]] == [key for key, _ in cli[caption]], caption
        assert [r["score"] for r in body["results"]] == pytest.approx([s for _, s in cli[caption]], abs=2e-6)
        assert [r["rank"] for r in body["results"]] == list(range(1, k + 1))


def test_paging_and_post_batches_agree_with_get(api, synth_dir):
    q = read_manifest(synth_dir / "test.jsonl")[0].caption
    whole = api.get("/api/search", params={"q": q, "k": 6}).json()["results"]
    second = api.get("/api/search", params={"q": q, "k": 3, "offset": 3}).json()["results"]
    assert [r["key"] for r in second] == [r["key"] for r in whole[3:]] and second[0]["rank"] == 4
    other = read_manifest(synth_dir / "test.jsonl")[1].caption
    batch = api.post("/api/search", json={"queries": [q, other], "k": 6}).json()["results"]
    assert [r["key"] for r in batch[0]["results"]] == [r["key"] for r in whole]
    assert batch[1]["query"] == other and len(batch[1]["results"]) == 6


def test_similar_puts_the_clip_first_and_metadata_frames_video(api, synth_dir):
    record = read_manifest(synth_dir / "test.jsonl")[0]
    similar = api.get("/api/similar", params={"key": record.video, "k": 3}).json()["results"]
    assert similar[0]["key"] == record.video and similar[0]["score"] == pytest.approx(1.0, abs=1e-5)
    meta = api.get(f"/api/clips/{record.video}").json()
    assert meta["caption"] == record.caption and meta["has_video"] and meta["label"] == record.label
    strip = api.get(f"/api/clips/{record.video}/frames.jpg")
    assert strip.status_code == 200 and strip.content[:3] == b"\xff\xd8\xff"  # a JPEG
    whole = (synth_dir / record.video).read_bytes()
    part = api.get(f"/api/clips/{record.video}/video", headers={"Range": "bytes=10-29"})
    assert part.status_code == 206 and part.content == whole[10:30]
    assert part.headers["content-range"] == f"bytes 10-29/{len(whole)}"


@pytest.mark.parametrize("path", ["/api/clips/../../etc/passwd/video", "/api/clips/%2Fetc%2Fpasswd/video",
                                  "/api/clips/videos%2F..%2F..%2Fetc%2Fpasswd/video", "/api/clips/..%2F..%2Fx/video",
                                  "/api/clips/videos/nothere.mp4/video", "/api/clips/videos/nothere.mp4"])
def test_files_only_through_index_keys(api, path):
    assert api.get(path).status_code == 404


def test_a_symlink_out_of_the_collection_root_is_not_served(synth_dir, tmp_path):
    """A key of the index whose file is a symlink leaving the root: indexed, but never served."""
    from tests.helpers.cli import run_evilm
    from tests.retrieval.test_retrieve_cli import write_model

    videos = tmp_path / "videos"
    videos.mkdir()
    outside = tmp_path / "outside.mp4"
    outside.write_bytes((synth_dir / "videos" / "00000.mp4").read_bytes())
    os.symlink(outside, videos / "link.mp4")
    os.symlink(synth_dir / "videos" / "00001.mp4", videos / "inside.mp4")  # a symlink staying inside is not either
    (videos / "plain.mp4").write_bytes((synth_dir / "videos" / "00002.mp4").read_bytes())
    model = write_model(tmp_path / "model", synth_dir, seed=0)
    run_evilm("retrieve", "index", "--checkpoint", model, "--videos", videos, "--out", tmp_path / "index",
              "--workers", "0", "--threads", "1")
    with client_for(tmp_path / "index") as client:
        ready(client)
        assert client.get("/api/clips/link.mp4/video").status_code == 404
        assert client.get("/api/clips/inside.mp4/video").status_code == 404
        assert client.get("/api/clips/plain.mp4/video").status_code == 200
        assert client.get("/api/clips/link.mp4").json()["has_video"] is False


def test_the_token_guards_the_api_but_not_health(served_index):
    with client_for(served_index, token="s3cret") as client:
        assert client.get("/healthz").status_code == 200
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert client.get("/api/search", params={"q": "a red star"}).status_code == 401
        assert client.get("/api/search", params={"q": "a red star"},
                          headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/api/search", params={"q": "a red star"},
                          headers={"Authorization": "Bearer s3cret"}).status_code == 200
        client.cookies.set("evilm_token", "s3cret")  # what the page sets: <video> and <img> send no header
        assert client.get("/api/search", params={"q": "a red star"}).status_code == 200


def test_limits(api):
    assert api.get("/api/search", params={"q": "a", "k": 101}).status_code == 422
    assert api.get("/api/search", params={"q": "a", "offset": -1}).status_code == 422
    assert api.get("/api/search", params={"q": "   "}).status_code == 422
    assert api.get("/api/search", params={"q": "red " * 300}).status_code == 413
    assert api.post("/api/search", json={"queries": ["a"] * 65}).status_code == 413
    assert api.post("/api/search", content=b"[" * 70_000).status_code == 413
    assert api.post("/api/search", content=b"{not json").status_code == 422
    assert api.get("/api/search", params={"q": "a", "index": "other"}).status_code == 404
    assert api.get("/api/search", params={"q": "a red star"}).status_code == 200  # still serving


def test_index_loading_is_a_503_then_the_index_answers(served_index, monkeypatch):
    gate = threading.Event()
    load = Service.load
    monkeypatch.setattr(Service, "load", lambda self: (gate.wait(60), load(self)))
    with client_for(served_index) as client:
        assert client.get("/healthz").status_code == 200
        loading = client.get("/api/search", params={"q": "a red star"})
        assert loading.status_code == 503 and loading.json() == {"error": "index loading"}
        assert client.get("/readyz").status_code == 503
        gate.set()
        ready(client)
        assert client.get("/api/search", params={"q": "a red star"}).status_code == 200


def test_metrics_count_requests_by_route_and_batch_sizes(api):
    api.get("/api/search", params={"q": "a red star"})
    text = api.get("/metrics").text
    assert 'evilm_requests_total{method="GET",route="/api/search",status="200"}' in text
    assert "evilm_batch_queries_bucket" in text and "evilm_request_seconds_bucket" in text
    assert 'route="/api/clips/{key:path}/video"' in text  # templates, not raw keys


def test_a_window_index_answers_moments_that_play_from_their_start(long_dir, synth_dir, tmp_path):
    """On a window index (issue 31) results are moments: start and end beside the key, the same
    moments `retrieve query` prints; the video file is the long video itself."""
    from tests.retrieval.test_moments_cli import WINDOW, build
    from tests.retrieval.test_retrieve_cli import write_model

    model = write_model(tmp_path / "model", synth_dir, seed=0)
    build(model, long_dir / "moments.jsonl", tmp_path / "index", *WINDOW)
    query = json.loads((long_dir / "moments.jsonl").read_text().splitlines()[0])["caption"]
    cli = [line.split("\t") for line in query_lines(tmp_path / "index", "-k", "3", query)]
    with client_for(tmp_path / "index") as client:
        ready(client)
        results = client.get("/api/search", params={"q": query, "k": 3}).json()["results"]
        assert [(r["key"], r["start"], r["end"]) for r in results] == [(c[2], float(c[4]), float(c[5])) for c in cli]
        assert all(r["end"] > r["start"] >= 0 for r in results)
        assert client.get(f"/api/clips/{results[0]['key']}/video").status_code == 200


@pytest.fixture(scope="module")
def answering(served_index, synth_dir, tmp_path_factory):
    models = write_checkpoints(tmp_path_factory.mktemp("serve_qa"), synth_dir)
    yield models


def predict_line(models, kind: str, synth_dir, key: str, *args) -> dict:
    with in_process() as evilm:
        result = evilm("predict", "--checkpoint", models[kind], synth_dir / key, "--precision", "fp32",
                       "--workers", "0", "--threads", "1", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.splitlines()[0])


def test_answers_about_a_clip_are_predicts(answering, served_index, synth_dir):
    """POST /api/clips/{key}/answer gives `evilm predict`'s line for the same clip and question
    (qa: top-k answers and probabilities; a pre-trained checkpoint: zero-shot options)."""
    key = read_manifest(synth_dir / "test.jsonl")[0].video
    with client_for(served_index, qa=str(answering["qa"])) as client:
        ready(client)
        assert client.get("/api/indexes").json()["qa"]["takes"] == "a question"
        body = client.post(f"/api/clips/{key}/answer", json={"question": "what color is the shape", "k": 3}).json()
        assert client.post(f"/api/clips/{key}/answer", json={"question": " "}).status_code == 422
        assert client.post("/api/clips/nope.mp4/answer", json={"question": "what"}).status_code == 404
    line = predict_line(answering, "qa", synth_dir, key, "--question", "what color is the shape", "-k", "3")
    assert [a["answer"] for a in body["answers"]] == [a["answer"] for a in line["answers"]]
    assert [a["prob"] for a in body["answers"]] == pytest.approx([a["prob"] for a in line["answers"]], abs=1e-5)
    options = ["a red circle", "a blue square", "a green star"]
    with client_for(served_index, qa=str(answering["pretrained"])) as client:
        body = ready(client).post(f"/api/clips/{key}/answer", json={"options": options}).json()
    line = predict_line(answering, "pretrained", synth_dir, key, "--options", "|".join(options))
    assert body["chosen"] == line["chosen"] and body["scores"] == pytest.approx(line["scores"], abs=1e-5)


def test_no_answers_without_qa_and_a_retrieval_checkpoint_is_refused(api, answering, served_index, synth_dir):
    key = read_manifest(synth_dir / "test.jsonl")[0].video
    assert api.post(f"/api/clips/{key}/answer", json={"question": "what"}).status_code == 404
    assert api.get("/api/indexes").json()["qa"] is None
    with client_for(served_index, qa=str(answering["retrieval"])) as client:
        deadline = time.monotonic() + 120
        while "retrieval checkpoint" not in client.get("/readyz").text:
            assert time.monotonic() < deadline and client.get("/readyz").status_code == 503
            time.sleep(0.1)


def test_search_parameters_are_checked_and_documented(api):
    """GET /api/search reads its parameters itself (FastAPI's solving cost a fifth of the loop's
    time per search): a non-integer k or offset is a 422 naming it; /docs still lists them."""
    response = api.get("/api/search", params={"q": "a", "k": "ten"})
    assert response.status_code == 422 and "k must be an integer, got 'ten'" in response.json()["error"]
    assert api.get("/api/search", params={"q": "a", "offset": "1.5"}).status_code == 422
    params = api.get("/openapi.json").json()["paths"]["/api/search"]["get"]["parameters"]
    assert [p["name"] for p in params] == ["q", "k", "offset", "index"]
