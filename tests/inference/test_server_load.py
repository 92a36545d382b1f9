"""``benchmarks/serve_load.py`` on the CPU: two real WebSocket clients stream 3 s of fixture speech at
real-time pace into the in-process server (toy Pro model) and every frame comes back, measured."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_load.py"


def _load():
    spec = importlib.util.spec_from_file_location("serve_load", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_serve_load_two_clients(audio_dir, image_dir, tmp_path):
    out = tmp_path / "points.jsonl"
    result = _load().main([
        "--variant", "tiny-pro", "--device", "cpu", "--streams", "2", "--seconds", "3",
        "--audio", str(audio_dir / "speech_en_60s_16k.wav"), "--image", str(image_dir / "face_frontal_happy_256.png"),
        "--timeout-s", "120", "--out", str(out), "--profile-round", "2",
    ])
    prof = result["profile_round"]  # one synchronised round of 2 sessions, by part
    assert prof["batch"] == 2 and prof["dit"] > 0 and prof["decode"] > 0
    assert prof["total"] >= prof["dit"] + prof["decode"]
    (point,) = result["curve"]
    assert (point["streams"], point["served"], point["refused"], point["errors"]) == (2, 2, 0, [])
    assert point["frames"] == 2 * 75  # 3 s at 25 fps: two 28-frame chunks and a 19-frame flush, per client
    assert 0 < point["latency_p50_s"] <= point["latency_max_s"] < 60
    assert point["fps_median"] > 0 and point["server"]["rounds"] >= 3
    assert sum(point["stalls_by_chunk"].values()) == point["stalls"]
    assert point["server"]["recompiles"] == 0  # nothing compiled while serving (on a GPU: after warm-up)
    srv = point["server"]  # where the latency went on the server: round wait + round, then the MP4 encode
    assert 0 < srv["chunk_s_p50"] <= srv["chunk_s_p95"] and 0 < srv["encode_s_p50"] <= srv["encode_s_p95"]
    assert srv["chunk_s_p50"] + srv["encode_s_p50"] < point["latency_max_s"]
    assert out.read_text().count("\n") == 1


def test_serve_load_remote_clients_and_encoding_workers(audio_dir, image_dir):
    """The clients in a child process (``--client-process``) and the MP4s encoded by a worker process
    (``--encode-workers 1``): every frame still arrives, and the point carries the event loop's lag
    and the chunk size. ``--vae-buckets 2`` reaches the server (its lone session's VAE parts run
    padded to 2)."""
    result = _load().main([
        "--variant", "tiny-pro", "--device", "cpu", "--streams", "1", "--seconds", "2",
        "--audio", str(audio_dir / "speech_en_60s_16k.wav"), "--image", str(image_dir / "face_frontal_happy_256.png"),
        "--timeout-s", "120", "--client-process", "--encode-workers", "1", "--vae-buckets", "2",
    ])
    assert result["batching"]["vae_buckets"] == (2, 4)
    (point,) = result["curve"]
    assert (point["served"], point["errors"]) == (1, [])
    assert point["frames"] == 50
    assert point["mp4_kib_per_chunk"] > 0 and point["loop_lag_p95_s"] is not None


def test_serve_load_encodes_face_like_frames_in_place_of_noise(audio_dir, image_dir):
    """``--encode-content image``: the encoder gets the reference image shifted per frame in place of
    the random-weight model's noise, at the generated shape: every frame still arrives, and the MP4s
    shrink (noise does not compress; at the released 512x512, 3.3 MB against 43 KiB per Lite chunk)."""
    common = ["--variant", "tiny-pro", "--device", "cpu", "--streams", "1", "--seconds", "2",
              "--audio", str(audio_dir / "speech_en_60s_16k.wav"),
              "--image", str(image_dir / "face_frontal_happy_256.png"), "--timeout-s", "120"]
    mod = _load()
    (noise,) = mod.main(common)["curve"]
    result = mod.main([*common, "--encode-content", "image"])
    (face,) = result["curve"]
    assert result["encode_content"] == "image"
    assert (face["served"], face["errors"], face["frames"]) == (1, [], 50)
    assert face["mp4_kib_per_chunk"] * 2 < noise["mp4_kib_per_chunk"]  # 3.4 against 10.5 KiB at the toy size


def test_serve_load_refuses_vae_buckets_above_vae_batch(capsys):
    with pytest.raises(SystemExit):
        _load().parse_args(["--vae-batch", "4", "--vae-buckets", "2", "8"])
    assert "above vae_batch (4)" in capsys.readouterr().err  # BatchingConfig's own message
    assert _load().parse_args(["--vae-batch", "8", "--vae-buckets", "2", "4"]).vae_buckets == [2, 4]


def test_serve_load_without_streams_only_warms_up(audio_dir, image_dir, tmp_path):
    # a bare --streams: the warm-up (and --compile-artifacts) only, as the write pass of the GPU script runs it
    out = tmp_path / "points.jsonl"
    result = _load().main([
        "--variant", "tiny-pro", "--device", "cpu", "--streams", "--warm-up", "1", "2",
        "--audio", str(audio_dir / "speech_en_60s_16k.wav"), "--image", str(image_dir / "face_frontal_happy_256.png"),
        "--out", str(out),
    ])
    assert result["curve"] == [] and not out.exists()
    assert set(result["warm_up_round_s"]) == {"1", "2"} and result["warm_up_s"] > 0


def test_serve_load_warms_up_in_the_background_after_its_clients(audio_dir, image_dir):
    # --warm-up-in-background: sizes 3 and 1 before the port opens, 2 once the sweep's clients have left
    result = _load().main([
        "--variant", "tiny-pro", "--device", "cpu", "--streams", "2", "--seconds", "2",
        "--warm-up", "3", "2", "1", "--warm-up-in-background", "--timeout-s", "120",
        "--audio", str(audio_dir / "speech_en_60s_16k.wav"), "--image", str(image_dir / "face_frontal_happy_256.png"),
    ])
    assert set(result["warm_up_round_s"]) == {"3", "1"} and result["warm_up_later"] == [2]
    (point,) = result["curve"]
    assert (point["served"], point["errors"]) == (2, [])
    assert result["warm_up_later_done_s"] > 0
