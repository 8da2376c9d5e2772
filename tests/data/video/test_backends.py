"""The decoder backends (decord, PyAV, torchcodec): same frame indices, pixels within a measured
bound of decord's, `auto`, the errors for unknown and uninstalled backends, corrupt input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evilm_core.config.sections import DECODERS, DataConfig
from evilm_core.data.video import read as decoders
from evilm_core.data.video.backend_pyav import PyAVReader
from evilm_core.data.video.read import (
    AUTO_ORDER,
    VideoBytes,
    read_clip,
    read_frames,
    resolve_decoder,
    segment_indices,
    unavailable,
)
from evilm_core.data.video.write import write_mp4
from evilm_core.errors import EvilmError, VideoDecodeError
from evilm_core.settings import resolve_settings
from tests.helpers.cli import last_json, run_evilm

BACKENDS = [name for name in DECODERS if name != "auto"]
# Measured on the synthetic clips below (and WebVid-like ones, docs/benchmarks.md): PyAV's frames at
# full size equal decord's exactly; resized, the two scalers differ by a mean of ~1.1 levels (of 255).
MEAN_BOUND, MAX_BOUND = 2.5, 64


def _needs(name: str) -> None:
    why = unavailable(name)
    if why is not None:
        pytest.skip(f"{name} does not load here: {why}")


@pytest.fixture(scope="module")
def gop_clip(tmp_path_factory):
    """40 frames of 96x64, a keyframe every 10 frames, B-frames on (x264 defaults): moving content,
    so a wrong frame shows as a large difference."""
    import av

    path = tmp_path_factory.mktemp("clips") / "gop.mp4"
    rng = np.random.default_rng(0)
    base = (rng.random((64, 192, 3)) * 255).astype(np.uint8)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25, options={"g": "10", "keyint_min": "10", "sc_threshold": "0",
                                                                   "threads": "1", "crf": "18"})
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for t in range(40):
            frame = np.ascontiguousarray(base[:, 2 * t:2 * t + 96])
            frame[10:20, t:t + 10] = (255, 0, 0)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def _clip(path, indices, size, decoder):
    return read_frames(path, lambda n: indices, size, decoder)


@pytest.mark.parametrize("name", BACKENDS)
def test_each_backend_samples_the_same_indices_close_to_decord(name, gop_clip, synth_dir):
    _needs(name)
    _needs("decord")
    videos = [gop_clip, *sorted((synth_dir / "videos").glob("*.mp4"))[:3]]
    for path in videos:
        for mode, seed in (("eval", 0), ("train", 1), ("train", 2)):
            ref = read_clip(path, 4, 32, mode, np.random.default_rng(seed), decoder="decord")
            got = read_clip(path, 4, 32, mode, np.random.default_rng(seed), decoder=name)
            assert got.indices == ref.indices and got.num_video_frames == ref.num_video_frames
            assert got.frames.shape == ref.frames.shape and got.frames.dtype == np.uint8
            assert abs(got.fps - ref.fps) < 1e-6
            diff = np.abs(got.frames.astype(int) - ref.frames.astype(int))
            assert diff.mean() <= MEAN_BOUND and diff.max() <= MAX_BOUND, (path, mode, diff.mean(), diff.max())


def test_pyav_is_frame_exact_against_decord(gop_clip):
    """Every frame, at full size, in a scattered order with repeats (seeks back and forward,
    non-reference frames skipped between wanted ones): identical to decord's."""
    _needs("decord")
    import decord

    order = [39, 0, 5, 5, 17, 16, 30, 1, 38, 10, 9, 25]
    ref = decord.VideoReader(str(gop_clip), num_threads=1).get_batch(order).asnumpy()
    assert np.array_equal(_clip(gop_clip, order, None, "pyav").frames, ref)
    everything = list(range(40))
    ref = decord.VideoReader(str(gop_clip), num_threads=1).get_batch(everything).asnumpy()
    assert np.array_equal(_clip(gop_clip, everything, None, "pyav").frames, ref)


def test_pyav_skipping_non_reference_frames_changes_nothing(gop_clip, monkeypatch):
    wanted = [3, 14, 22, 37]
    skipping = _clip(gop_clip, wanted, 32, "pyav").frames
    monkeypatch.setattr("evilm_core.data.video.backend_pyav.NONREF", "DEFAULT")  # decode every frame
    assert np.array_equal(_clip(gop_clip, wanted, 32, "pyav").frames, skipping)


def test_pyav_reused_reformatter_equals_a_fresh_one_whatever_the_size(gop_clip):
    """One swscale context per thread is reused across frames, clips and sizes (evilm_core/data/
    decode_pyav.py): each result must equal what a fresh reformatter makes of the same frame."""
    import av

    wanted = [2, 13, 27]
    with av.open(str(gop_clip)) as container:
        frames = [f for i, f in enumerate(container.decode(video=0)) if i in wanted]
    for size in (32, 48, 32, 96):
        got = _clip(gop_clip, wanted, size, "pyav").frames
        fresh = np.stack([f.reformat(width=size, height=size, format="rgb24", interpolation="BILINEAR")
                          .to_ndarray(format="rgb24") for f in frames])
        assert got.shape == (3, size, size, 3) and np.array_equal(got, fresh), size


def _decode_in_child(path, queue):
    queue.put(_clip(path, [2, 13], 32, "pyav").frames.shape)


def test_pyav_decodes_in_a_forked_child_after_the_parent_did(gop_clip):
    """`data check` forks its workers: a child must not reuse the parent's swscale context (it
    waited forever on scaler threads only the parent had)."""
    import multiprocessing

    _clip(gop_clip, [2, 13], 32, "pyav")  # the parent's reformatter exists now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_decode_in_child, args=(gop_clip, queue))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0 and queue.get(timeout=5) == (2, 32, 32, 3)


def test_pyav_seeks_only_when_needed(gop_clip, monkeypatch):
    seeks = []
    original = PyAVReader._seek_to
    monkeypatch.setattr(PyAVReader, "_seek_to", lambda self, key: (seeks.append(key), original(self, key))[1])
    reader = PyAVReader(str(gop_clip), 32)
    reader.get([1, 4, 8])  # one GOP from the start: no seek
    assert seeks == []
    reader.get([35])  # keyframe 30 is ahead: seek there
    assert seeks == [30]
    reader.get([12])  # behind: seek back to keyframe 10
    assert seeks == [30, 10]
    reader.get([19])  # further on in the same GOP: decode forward
    assert seeks == [30, 10]
    reader.get([18])  # its packet was sent (and dropped) on the way to 19: back to its keyframe
    assert seeks == [30, 10, 10]
    reader.close()


@pytest.mark.parametrize("name", BACKENDS)
def test_bytes_decode_like_the_file(name, gop_clip):
    _needs(name)
    data = VideoBytes("tar/gop.mp4", gop_clip.read_bytes())
    a = read_clip(data, 4, 32, decoder=name)
    b = read_clip(gop_clip, 4, 32, decoder=name)
    assert a.indices == b.indices and np.array_equal(a.frames, b.frames)


@pytest.mark.parametrize("name", BACKENDS)
def test_corrupt_input_is_a_skippable_decode_error(name, tmp_path, gop_clip):
    _needs(name)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00not a video at all" * 50)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(gop_clip.read_bytes()[:300])  # the header only
    for source in (junk, cut, VideoBytes("t/junk.mp4", junk.read_bytes()), VideoBytes("t/empty.mp4", b"")):
        with pytest.raises(VideoDecodeError) as err:
            read_clip(source, 4, 32, decoder=name)
        assert err.value.reason == "corrupt" and str(source) in str(err.value)
    with pytest.raises(VideoDecodeError) as err:
        read_clip(tmp_path / "absent.mp4", 4, 32, decoder=name)
    assert err.value.reason == "missing"


def test_auto_picks_the_first_working_backend_in_order(monkeypatch):
    assert AUTO_ORDER[0] == "pyav" and set(AUTO_ORDER) == set(BACKENDS)
    assert resolve_decoder("auto") == next(n for n in AUTO_ORDER if unavailable(n) is None)
    fake = {"pyav": "ImportError: no av", "decord": None, "torchcodec": None}
    monkeypatch.setattr(decoders, "unavailable", lambda name: fake[name])
    assert resolve_decoder("auto") == "decord"
    fake["decord"] = "ImportError: no decord"
    assert resolve_decoder("auto") == "torchcodec"
    fake["torchcodec"] = "OSError: libavutil.so.56"
    with pytest.raises(EvilmError, match="no video decoder works here"):
        resolve_decoder("auto")


def test_unknown_decoder_value_names_the_key_and_the_choices():
    with pytest.raises(ValueError, match=r"data.decoder must be one of auto, pyav, decord, torchcodec, got 'ffmpeg'"):
        DataConfig(decoder="ffmpeg")
    with pytest.raises(EvilmError, match=r"--decoder: unknown decoder 'ffmpeg'; valid values: auto, pyav, decord"):
        resolve_decoder("ffmpeg", "--decoder")


def test_a_backend_that_does_not_load_names_the_extra(monkeypatch):
    decoders.unavailable.cache_clear()
    monkeypatch.setitem(decoders.READERS, "torchcodec", _raise(OSError("libavutil.so.56: cannot open shared object")))
    try:
        with pytest.raises(EvilmError) as err:
            resolve_decoder("torchcodec")
        text = str(err.value)
        assert "data.decoder: the torchcodec decoder is not usable here" in text and "libavutil.so.56" in text
        assert "pip install 'evilm[torchcodec]'" in text and "FFmpeg" in text
        with pytest.raises(EvilmError, match="not usable here"):  # where the run starts, before any clip
            resolve_settings("cpu", "fp32", 1, "torchcodec")
    finally:
        decoders.unavailable.cache_clear()


def _raise(error):
    def reader(source, size):
        raise error
    return reader


def test_segment_indices_do_not_depend_on_the_backend():
    for n in (1, 7, 150):
        assert segment_indices(n, 8, "eval") == segment_indices(n, 8, "eval")


def test_ramp_levels_through_pyav(tmp_path):
    data = np.stack([np.full((64, 64, 3), 20 * k, np.uint8) for k in range(12)])
    write_mp4(tmp_path / "ramp.mp4", data, fps=8)
    clip = read_clip(tmp_path / "ramp.mp4", 4, 32, decoder="pyav")
    assert clip.indices == [1, 4, 7, 10]
    assert np.allclose(clip.frames.reshape(4, -1).mean(1), [20 * i for i in clip.indices], atol=6)


def test_data_check_cli_with_decoder_pyav(synth_dir):
    proc = run_evilm("data", "check", str(synth_dir / "test.jsonl"), "--decoder", "pyav", "--workers", "1",
                     "--frames", "2", "--image-size", "32", "--json")
    report = last_json(proc.stdout)
    assert report["decoder"] == "pyav" and report["ok"] == report["total"] > 0
    bad = run_evilm("data", "check", str(synth_dir / "test.jsonl"), "--decoder", "ffmpeg", check=False)
    assert bad.returncode != 0 and "valid values: auto, pyav, decord, torchcodec" in bad.stderr


def test_shard_set_records_the_backend_and_refuses_another_on_resume(synth_dir, tmp_path):
    from evilm_core.prepare.shards import ShardRequest, build_shards, settings_of

    _needs("decord")
    out = tmp_path / "shards"
    req = ShardRequest(input=str(synth_dir / "val.jsonl"), out=str(out), settings=settings_of(2, 32, 90, "pyav"))
    build_shards(req)
    assert json.loads((out / "index.json").read_text())["settings"]["decoder"] == "pyav"
    other = ShardRequest(input=req.input, out=str(out), settings=settings_of(2, 32, 90, "decord"))
    with pytest.raises(EvilmError, match=r"decoded with pyav, this run would decode with decord: add `--decoder pyav`"):
        build_shards(other)
