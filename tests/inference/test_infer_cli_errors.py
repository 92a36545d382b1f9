"""``vividhead infer`` / ``serve`` with bad input, through the real entry point (:func:`vividhead.cli.main`):
one line ``error: ...`` on stderr naming the input, exit code 2, and no model loaded before the
inputs are checked (``ModelOptions.load`` raises if it is reached). Covers ``infer --image
missing.png / notes.txt`` and ``infer`` without ``--device`` on a machine without CUDA."""

from __future__ import annotations

import pytest
import torch
from conftest import FIXTURES
from tiny_models import TINY_LITE, write_tiny_export

import vividhead.cli as cli
from vividhead.inference.cli import ModelOptions

IMAGE = FIXTURES / "media" / "image" / "face_frontal_happy_256.png"
AUDIO = FIXTURES / "media" / "audio" / "speech_jfk_16k.wav"


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``vividhead ARGV``."""
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    captured = capsys.readouterr()
    return info.value.code or 0, captured.out, captured.err


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a command gets as far as loading a model."""

    def refuse(self):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(ModelOptions, "load", refuse)
    monkeypatch.delenv("VIVIDHEAD_DEBUG", raising=False)


@pytest.fixture
def files(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image, not audio\n")
    checkpoint_dir = tmp_path / "SoulX-FlashHead-1_3B"
    checkpoint_dir.mkdir()
    return {"notes": str(notes), "tmp": tmp_path, "checkpoint_dir": str(checkpoint_dir)}


ROWS = [
    # (id, argv after the command, words the one line must hold)
    ("image_missing", ["--image", "missing.png"], ["--image missing.png", "no such file"]),
    ("image_not_an_image", ["--image", "{notes}"], ["--image", "notes.txt", "not a readable image"]),
    ("image_is_a_folder", ["--image", "{tmp}"], ["--image", "is a folder"]),
    ("audio_missing", ["--audio", "missing.wav"], ["--audio missing.wav", "no such file"]),
    ("audio_unreadable", ["--audio", "{notes}"], ["--audio", "notes.txt", "cannot read audio"]),
    ("no_weights", [], ["no weights given", "--checkpoint", "--random-weights"]),
    ("checkpoint_missing", ["--checkpoint", "{tmp}/no_export"], ["--checkpoint", "no_export", "no such folder"]),
    ("checkpoint_is_a_file", ["--checkpoint", "{notes}"], ["--checkpoint", "not a folder"]),
    ("checkpoint_dir_incomplete", ["--checkpoint-dir", "{checkpoint_dir}", "--wav2vec-dir", "{tmp}"],
     ["--checkpoint-dir", "no Model_Pro/ inside"]),
    ("bad_dtype", ["--random-weights", "--dtype", "fp64"], ["--dtype 'fp64'", "bf16"]),
    ("fp8_on_cpu", ["--random-weights", "--device", "cpu", "--fp8"], ["--fp8 needs the fast path on a GPU"]),
    ("dynamic_batch_on_cpu", ["--random-weights", "--device", "cpu", "--dynamic-batch"],
     ["--dynamic-batch needs the fast path on a GPU"]),
    ("unknown_variant", ["--random-weights", "--variant", "ultra"], ["--variant 'ultra'", "lite, pro"]),
    ("unknown_variant_with_checkpoint_dir", ["--checkpoint-dir", "{checkpoint_dir}", "--wav2vec-dir", "{tmp}",
                                             "--variant", "ultra"], ["--variant 'ultra'", "lite, pro"]),
    ("device_not_a_device", ["--random-weights", "--device", "gpu"], ["--device 'gpu'", "not a device"]),
    ("device_empty", ["--random-weights", "--device", ""], ["--device ''", "not a device"]),
]


def _argv(command: str, extra: list[str], files: dict, out: bool = True) -> list[str]:
    base = {"--image": str(IMAGE), "--audio": str(AUDIO)} if command == "infer" else {"--image": str(IMAGE)}
    extra = [x.format(**files) for x in extra]
    for flag, value in base.items():
        if flag not in extra:
            extra = [flag, value, *extra]
    return [command, *extra, *(["--out", str(files["tmp"] / "out.mp4")] if out and command == "infer" else [])]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_infer_bad_input_is_one_line_before_any_model_loads(row, files, no_model_load, capsys):
    _, extra, words = row
    code, _, err = run_cli(_argv("infer", extra, files), capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], lines[0]
    assert not (files["tmp"] / "out.mp4").exists()


@pytest.mark.parametrize("row", [r for r in ROWS if r[0].startswith(("image", "no_weights", "checkpoint"))],
                         ids=lambda r: r[0])
def test_serve_bad_input_is_one_line_before_any_model_loads(row, files, no_model_load, capsys):
    _, extra, words = row
    code, _, err = run_cli(_argv("serve", extra, files), capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(word in lines[0] for word in words), lines[0]


SERVE_ROWS = [
    ("margin_zero", ["--realtime-margin", "0"], ["realtime_margin", "(0, 1]"]),
    ("max_batch_zero", ["--max-batch", "0"], ["max_batch (0)", ">= 1"]),
    ("max_sessions_zero", ["--max-sessions", "0"], ["max_sessions must be >= 1"]),
    ("bucket_zero", ["--batch-buckets", "0,4"], ["batch_buckets must be positive"]),
    ("gather_negative", ["--gather-s", "-1"], ["gather_s must be >= 0"]),
    ("port_negative", ["--port", "-1"], ["--port -1", "0..65535"]),
    ("port_too_large", ["--port", "70000"], ["--port 70000", "0..65535"]),
    ("load_window_negative", ["--load-window-s", "-5"], ["--load-window-s -5.0", ">= 0"]),
    ("warm_up_zero", ["--warm-up-batches", "0"], ["--warm-up-batches '0'", ">= 1"]),
    ("warm_up_negative", ["--warm-up-batches", "4,-1"], ["--warm-up-batches '4,-1'", ">= 1"]),
    ("warm_up_not_integers", ["--warm-up-batches", "a"], ["--warm-up-batches 'a'", "comma-separated integers"]),
    ("buckets_not_integers", ["--batch-buckets", "1,x"], ["--batch-buckets '1,x'", "comma-separated integers"]),
    ("vae_buckets_not_integers", ["--vae-buckets", "2,x"], ["--vae-buckets '2,x'", "comma-separated integers"]),
    ("vae_bucket_zero", ["--vae-buckets", "0,2"], ["vae_buckets must be positive"]),
    ("vae_bucket_above_vae_batch", ["--vae-buckets", "2,4,8"], ["vae_buckets (2, 4, 8)", "above vae_batch (4)"]),
    ("vae_bucket_above_given_vae_batch", ["--vae-batch", "2", "--vae-buckets", "1,4"],
     ["vae_buckets (1, 4)", "above vae_batch (2)"]),
    ("vae_batch_zero", ["--vae-batch", "0"], ["vae_batch (0)", ">= 1"]),
    ("vae_batch_negative", ["--vae-batch", "-2"], ["vae_batch (-2)", ">= 1"]),
    ("vae_batch_not_an_integer", ["--vae-batch", "2.5"], ["--vae-batch", "valid integer"]),
    ("unknown_variant", ["--variant", "ultra"], ["--variant 'ultra'"]),
    ("device_not_a_device", ["--device", "gpu"], ["--device 'gpu'", "not a device"]),
]


@pytest.mark.parametrize("row", SERVE_ROWS, ids=[r[0] for r in SERVE_ROWS])
def test_serve_bad_limits_are_one_line_before_any_model_loads(row, files, no_model_load, capsys):
    _, extra, words = row
    code, _, err = run_cli(_argv("serve", ["--random-weights", *extra], files), capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(word in lines[0] for word in words), lines[0]


def test_serve_batching_options_reach_the_batching_config(files, monkeypatch):
    """``--vae-batch``, ``--batch-buckets``, ``--vae-buckets`` and ``--gather-s`` arrive in the
    server's BatchingConfig (normalised), and without them serve's defaults are BatchingConfig's;
    the command is stopped where the model would load."""
    import vividhead.inference.cli as inference_cli
    from vividhead.inference.batching import BatchingConfig

    class Stop(Exception):
        pass

    seen = []

    def spy(model, batching):
        seen.append(batching)
        return False

    def stop(self):
        raise Stop

    monkeypatch.setattr(inference_cli, "serves_exact_sizes", spy)
    monkeypatch.setattr(ModelOptions, "load", stop)
    with pytest.raises(Stop):
        cli.main(_argv("serve", ["--random-weights", "--device", "cpu", "--batch-buckets", "4,8",
                                 "--vae-buckets", "2,1", "--gather-s", "0.25"], files))
    with pytest.raises(Stop):
        cli.main(_argv("serve", ["--random-weights", "--device", "cpu", "--vae-batch", "8",
                                 "--vae-buckets", "2,4"], files))
    with pytest.raises(Stop):
        cli.main(_argv("serve", ["--random-weights", "--device", "cpu"], files))
    batching, eight, default = seen
    assert (batching.batch_buckets, batching.vae_buckets, batching.gather_s) == ((1, 4, 8), (1, 2, 4), 0.25)
    assert (batching.padded_vae(1), batching.padded_vae(3)) == (1, 4)
    assert (eight.vae_batch, eight.vae_buckets) == (8, (2, 4, 8))
    assert (eight.padded_vae(1), eight.padded_vae(5)) == (2, 8)
    assert default == BatchingConfig()


def test_out_folder_is_refused(files, no_model_load, capsys):
    code, _, err = run_cli(["infer", "--image", str(IMAGE), "--audio", str(AUDIO), "--out", str(files["tmp"]),
                            "--random-weights"], capsys)
    assert code == 2 and err.strip() == f"error: --out {files['tmp']}: is a folder; give the .mp4 file to write"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_one_line(files, no_model_load, capsys):
    code, _, err = run_cli(_argv("infer", ["--random-weights", "--device", "cuda"], files), capsys)
    assert code == 2 and err.strip() == "error: --device cuda: this machine has no CUDA device; use --device cpu (or auto)"


def test_crop_face_without_detector_weights(files, no_model_load, capsys, monkeypatch, tmp_path):
    empty = tmp_path / "no_weights"
    empty.mkdir()
    monkeypatch.setenv("VIVIDHEAD_WEIGHTS_DIR", str(empty))
    monkeypatch.setenv("VIVIDHEAD_CACHE", str(empty))
    monkeypatch.setenv("VIVIDHEAD_OFFLINE", "1")
    code, _, err = run_cli(_argv("infer", ["--random-weights", "--crop-face"], files), capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "--crop-face needs the face detector" in lines[0] and "face_mediapipe_detector.tflite" in lines[0]


def test_debug_shows_the_traceback(files, no_model_load, capsys, monkeypatch):
    monkeypatch.setenv("VIVIDHEAD_DEBUG", "1")
    from vividhead.errors import UserError

    with pytest.raises(UserError, match="no such file"):
        cli.main(_argv("infer", ["--image", "missing.png"], files))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_infer_without_device_runs_on_the_cpu(tmp_path, capsys, monkeypatch):
    """No ``--device``: auto picks the CPU with fp32 and says so once (the issue's row was
    ``AssertionError: Torch not compiled with CUDA enabled``)."""
    import soundfile as sf

    monkeypatch.delenv("VIVIDHEAD_DEBUG", raising=False)
    data, sr = sf.read(str(AUDIO), dtype="float32")
    clip = tmp_path / "clip.wav"
    sf.write(str(clip), data[: int(0.5 * sr)], sr)
    export = write_tiny_export(tmp_path / "export", TINY_LITE)
    out = tmp_path / "out.mp4"
    code, stdout, err = run_cli(["infer", "--image", str(IMAGE), "--audio", str(clip), "--out", str(out),
                                 "--checkpoint", str(export)], capsys)
    assert code == 0, err
    assert err.count("device: cpu, fp32 (auto: no CUDA device)") == 1
    assert out.stat().st_size > 0 and "wrote" in stdout


def test_warm_up_in_background_needs_one_compile_for_every_size(files, monkeypatch, capsys):
    """On a GPU a model compiled per batch size would compile a size not yet warm while its sessions
    wait: ``--warm-up-in-background`` without ``--dynamic-batch`` stops before any model loads."""
    import dataclasses

    real_prepare = ModelOptions.prepare

    def on_a_gpu(self):  # Pro on a GPU: no exact sizes, so --dynamic-batch stays off
        return dataclasses.replace(real_prepare(self), device="cuda:0")

    def no_load(self):
        raise AssertionError("the model loaded")

    monkeypatch.setattr(ModelOptions, "prepare", on_a_gpu)
    monkeypatch.setattr(ModelOptions, "load", no_load)
    code, _, err = run_cli(_argv("serve", ["--random-weights", "--variant", "pro", "--warm-up-in-background"], files),
                           capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: ") and "--dynamic-batch" in last, err
