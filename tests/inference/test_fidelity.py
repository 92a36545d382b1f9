"""Released-code fidelity switches (vividhead/streaming/fidelity.py), the reference face crop
(inference/face_crop.py), audio reading through librosa (vividhead/media.py) and weights by Hub id
(inference/checkpoints.py), on tiny seeded models and the shared fixture media."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import typer
from PIL import Image
from tiny_models import TINY_PRO, write_tiny_export
from typer.testing import CliRunner

from vividhead.inference.cli import ModelOptions, register, with_model_options
from vividhead.inference.pipeline import StreamingSession
from vividhead.streaming.fidelity import FidelityOptions, frames_to_uint8, preprocess_reference

FIXTURES = Path(os.environ.get("VIVIDHEAD_FIXTURES", Path(__file__).resolve().parents[3] / "shared" / "fixtures"))
IMAGES, AUDIO = FIXTURES / "media" / "image", FIXTURES / "media" / "audio"
needs_fixtures = pytest.mark.skipif(not (FIXTURES / "media").is_dir(), reason="shared fixtures missing")


def _released_oracle(image: np.ndarray, size: tuple[int, int], top: int, left: int, h: int, w: int) -> torch.Tensor:
    """PIL bilinear resize to ``size`` (w, h), crop at (top, left), then (x / 255 - 0.5) * 2."""
    r = np.array(Image.fromarray(image).resize(size, resample=Image.BILINEAR))[top : top + h, left : left + w]
    return ((torch.from_numpy(r).permute(2, 0, 1).float() / 255 - 0.5) * 2)[None, :, None]


# -- 1. reference resize / crop ------------------------------------------------------------------
def test_reference_released_recipe_rounds_up_and_crops_half_to_even(ref_image):
    # 48x40 -> 32x32: scale 0.8, released size ceil(38.4) = 39 rows, top = round(3.5) = 4;
    # ours: round(38.4) = 38 rows, top = 3.
    released = preprocess_reference(ref_image, 32, 32)
    assert released.shape == (1, 3, 1, 32, 32) and released.dtype == torch.float32
    assert torch.equal(released, _released_oracle(ref_image, (32, 39), 4, 0, 32, 32))
    assert not torch.equal(released, _released_oracle(ref_image, (32, 39), 3, 0, 32, 32))
    ours = preprocess_reference(ref_image, 32, 32, antialias=True)
    assert ours.shape == released.shape and (ours - released).abs().max() > 0.05


@needs_fixtures
def test_reference_released_recipe_on_a_wide_photo():
    img = np.asarray(Image.open(IMAGES / "face_frontal_musk.png").convert("RGB"))  # 266 x 474
    assert img.shape[:2] == (266, 474)
    # scale 64/266: released width ceil(114.05) = 115, left = round(25.5) = 26 (ours: 114, left 25)
    got = preprocess_reference(img, 64, 64)
    h = int(np.ceil(64 / 266 * 266))
    assert torch.equal(got, _released_oracle(img, (115, h), int(round((h - 64) / 2)), 26, 64, 64))
    # the released normalisation runs in the model dtype
    bf = preprocess_reference(img, 64, 64, dtype=torch.bfloat16)
    r = np.array(Image.fromarray(img).resize((115, h), resample=Image.BILINEAR))[:64, 26:90]
    want = ((torch.from_numpy(r).permute(2, 0, 1).to(torch.bfloat16) / 255 - 0.5) * 2).float()[None, :, None]
    assert torch.equal(bf, want) and not torch.equal(bf, got)


# -- 2. uint8 conversion ------------------------------------------------------------------------------
def test_uint8_round_and_released_truncation():
    x = torch.tensor([-1.2, -1.0, (100.7 / 127.5) - 1, 0.0, 1.0, 1.3]).view(3, 2, 1, 1)  # [3, T=2, 1, 1]
    rounded, truncated = frames_to_uint8(x), frames_to_uint8(x, round_=False)
    assert rounded.shape == (2, 1, 1, 3) and rounded.dtype == torch.uint8
    r, t = rounded.permute(3, 0, 1, 2).flatten().tolist(), truncated.permute(3, 0, 1, 2).flatten().tolist()
    assert r == [0, 0, 101, 128, 255, 255]  # 127.5 rounds half to even -> 128
    assert t == [0, 0, 100, 127, 255, 255]
    v = torch.rand(3, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 2.4 - 1.2
    want = (((v + 1) / 2).clamp(0, 1) * 255).numpy().astype(np.uint8)  # the released numpy cast
    assert np.array_equal(frames_to_uint8(v, round_=False).numpy(), want.transpose(1, 2, 3, 0))


def test_session_uint8_option(tiny_pro_fast_vae, ref_image, speech):
    pcm = speech[:17920]
    rounded = list(StreamingSession(tiny_pro_fast_vae, ref_image, seed=3).feed(pcm))[0]
    trunc_models = dataclasses.replace(tiny_pro_fast_vae, fidelity=FidelityOptions(uint8_round=False))
    truncated = list(StreamingSession(trunc_models, ref_image, seed=3).feed(pcm))[0]
    diff = rounded.astype(int) - truncated.astype(int)
    assert diff.min() == 0 and diff.max() == 1 and 0.2 < diff.mean() < 0.8


# -- 3. + 4. LTX posterior sampling and decode clamp ---------------------------------------------------
def test_ltx_switches_reach_the_vae_without_touching_shared_models(tiny_lite):
    assert tiny_lite.vae.sample_posterior and not tiny_lite.vae.clamp_decode  # released defaults
    ours = dataclasses.replace(tiny_lite, fidelity=FidelityOptions.deterministic())
    assert not ours.vae.sample_posterior and ours.vae.clamp_decode
    assert ours.vae.model is tiny_lite.vae.model  # same weights
    assert tiny_lite.vae.sample_posterior and not tiny_lite.vae.clamp_decode  # the shared one is unchanged
    z = torch.randn(1, 8, 2, 2, 2, generator=torch.Generator().manual_seed(0)) * 3
    raw, clamped = tiny_lite.vae.decode(z), ours.vae.decode(z)
    assert raw.abs().max() > 1.05  # the released decode leaves values outside [-1, 1] ...
    assert torch.equal(clamped, raw.clamp(-1, 1))  # ... ours clamps them


def test_ltx_posterior_sample_or_mean_in_the_session(tiny_lite, ref_image, speech):
    from vividhead.flow_matching import reference_video

    seed = 5
    mean_models = dataclasses.replace(tiny_lite, fidelity=FidelityOptions(ltx_sample_posterior=False))
    s_mean = StreamingSession(mean_models, ref_image, seed=seed)
    s = StreamingSession(tiny_lite, ref_image, seed=seed)
    ref = reference_video(preprocess_reference(ref_image, 64, 64), 33)
    torch.testing.assert_close(s_mean.ref_latent, mean_models.vae.encode(ref), rtol=0, atol=0)
    sampled = tiny_lite.vae.encode(ref, generator=torch.Generator().manual_seed(seed + 1))
    torch.testing.assert_close(s.ref_latent, sampled, rtol=0, atol=0)
    assert (s.ref_latent - s_mean.ref_latent).abs().max() > 1e-3
    # the motion latents are sampled from the session's posterior generator, reproducibly
    n = tiny_lite.variant.streaming.samples_per_chunk
    first = list(s.feed(speech[:n]))[0]
    motion_video = s.state.motion_video.clone()
    list(s.feed(speech[n : 2 * n]))
    want = tiny_lite.vae.encode(motion_video, generator=torch.Generator().manual_seed(seed + 2))
    torch.testing.assert_close(s.motion_latents, want, rtol=0, atol=0)
    again = list(StreamingSession(tiny_lite, ref_image, seed=seed).feed(speech[:n]))[0]
    assert np.array_equal(first, again)
    assert not np.array_equal(first, list(s_mean.feed(speech[:n]))[0])


def test_cli_flags_build_one_fidelity_option_set():
    seen = {}

    @with_model_options
    def probe(model: ModelOptions = ModelOptions()) -> None:
        seen["model"] = model

    app = typer.Typer()
    app.command("probe")(probe)
    app.command("other")(lambda: None)
    runner = CliRunner()
    assert runner.invoke(app, ["probe"]).exit_code == 0
    assert seen["model"].fidelity == FidelityOptions() and not seen["model"].crop_face
    res = runner.invoke(app, ["probe", "--ltx-posterior-mean", "--ltx-clamp-decode", "--uint8-truncate",
                              "--reference-antialias", "--crop-face"])
    assert res.exit_code == 0, res.output
    assert seen["model"].fidelity == FidelityOptions(False, True, False, True) and seen["model"].crop_face


# -- --crop-face ------------------------------------------------------------------------------------
@pytest.fixture
def detector_weights(monkeypatch):
    weights = FIXTURES / "weights"
    if not (weights / "face_mediapipe_detector.tflite").is_file():
        pytest.skip("detector weights missing")
    monkeypatch.setenv("VIVIDHEAD_WEIGHTS_DIR", str(weights))
    monkeypatch.setenv("VIVIDHEAD_OFFLINE", "1")


def _nature_frame() -> np.ndarray:
    import av

    with av.open(str(FIXTURES / "media" / "video" / "cuts_nature_3scenes.mp4")) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i == 100:
                return frame.to_ndarray(format="rgb24")
    raise AssertionError("short video")


@needs_fixtures
def test_crop_face_centres_the_face_as_released(detector_weights):
    from vividhead.inference.face_crop import crop_face, face_crop_box
    from vividhead.models.face_detector import FaceDetector

    img = np.asarray(Image.open(IMAGES / "face_frontal_musk.png").convert("RGB"))
    with FaceDetector.load() as det:
        face = det.detect(img)[0]
        x0, y0, x1, y1 = face_crop_box(face, img.shape[1], img.shape[0])
        side = 2.0 * (face.x1 - face.x0)
        assert abs((x1 - x0) - side) <= 1 and abs((y1 - y0) - side) <= 1  # square, 2x the face width
        out = crop_face(img, 256, 256, detector=det)
        assert out.shape == (256, 256, 3) and out.dtype == np.uint8
        again = det.detect(out)[0]
    cx, cy = again.center
    assert abs(cx - 128) < 12 and abs(cy - 0.55 * 256) < 12  # centred, 55 % of the crop above the face centre
    assert abs((again.x1 - again.x0) - 128) < 15  # the face is half the crop's width (face_ratio 2)


@needs_fixtures
def test_crop_face_without_a_face_is_a_one_line_error(detector_weights, tmp_path, capsys):
    from vividhead.inference.face_crop import NoFaceError, crop_face

    frame = _nature_frame()
    with pytest.raises(NoFaceError, match="no face found") as info:
        crop_face(frame, 64, 64)
    assert "\n" not in str(info.value)
    image = tmp_path / "leaf.png"
    Image.fromarray(frame).save(image)
    export = write_tiny_export(tmp_path / "export", TINY_PRO)
    from vividhead.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["infer", "--image", str(image), "--audio", str(AUDIO / "speech_jfk_16k.wav"),
              "--out", str(tmp_path / "o.mp4"), "--checkpoint", str(export), "--device", "cpu",
              "--dtype", "fp32", "--crop-face"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and not (tmp_path / "o.mp4").exists()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no face found" in errors[0] and "leaf.png" in errors[0], err


# -- audio through librosa ----------------------------------------------------------------------------
@needs_fixtures
def test_read_audio_44k_stereo_wav_and_flac(tmp_path):
    from scipy.signal import resample_poly

    from vividhead.media import read_audio

    wav = AUDIO / "speech_retalking1_44k.wav"
    data, sr = sf.read(str(wav), dtype="float32", always_2d=True)
    assert (sr, data.shape[1]) == (44100, 2)
    got = read_audio(wav)
    assert got.dtype == np.float32 and got.ndim == 1 and len(got) == int(np.ceil(len(data) * 16000 / sr))
    ref = resample_poly(data.mean(axis=1), 160, 441)  # an independent resampler
    n = min(len(ref), len(got))
    assert np.corrcoef(ref[:n], got[:n])[0, 1] > 0.999
    flac = tmp_path / "speech.flac"
    sf.write(str(flac), data, sr, format="FLAC", subtype="PCM_16")
    np.testing.assert_allclose(read_audio(flac), got, atol=2e-4)
    assert len(read_audio(wav, 24000)) == int(np.ceil(len(data) * 24000 / sr))
    if "MP3" in sf.available_formats():
        mp3 = tmp_path / "speech.mp3"
        sf.write(str(mp3), data, sr, format="MP3")
        dec = read_audio(mp3)
        assert abs(len(dec) - len(got)) < 1600 and abs(dec.std() / got.std() - 1) < 0.1
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(ValueError, match="cannot read audio") as info:
        read_audio(bad)
    assert "\n" not in str(info.value)


# -- weights by Hub id ----------------------------------------------------------------------------------
REV = "0123456789abcdef0123456789abcdef01234567"


def _fake_hub_cache(root: Path, repo_id: str, folder: Path) -> None:
    """The local Hugging Face cache layout of one snapshot (what ``hf download`` leaves behind)."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / REV)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)


def test_checkpoint_by_hub_id_offline(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as hub_constants

    from vividhead.inference.checkpoints import HubId, resolve_source
    from vividhead.weights import WeightsNotFound

    assert HubId.parse("hf://acme/tiny@v1") == HubId("acme/tiny", "v1") and HubId.parse("a b") is None
    hub = tmp_path / "hub"
    _fake_hub_cache(hub, "acme/tiny-flashhead", write_tiny_export(tmp_path / "export", TINY_PRO))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("VIVIDHEAD_OFFLINE", "1")
    got = resolve_source(f"acme/tiny-flashhead@{REV}", required=("vividhead_export.json",))
    assert got == hub / "models--acme--tiny-flashhead" / "snapshots" / REV
    assert resolve_source(str(tmp_path / "export")) == tmp_path / "export"  # a local path, offline
    with pytest.raises(WeightsNotFound, match="offline"):
        resolve_source(f"acme/absent@{REV}")
    with pytest.raises(FileNotFoundError, match="not a Hub id"):
        resolve_source("no such thing!")

    speech = tmp_path / "speech.wav"
    data, sr = sf.read(str(AUDIO / "speech_jfk_16k.wav"), dtype="float32") if AUDIO.is_dir() else (None, 0)
    if data is None:
        pytest.skip("shared fixtures missing")
    sf.write(str(speech), data[: sr], sr)
    image = tmp_path / "ref.png"
    Image.fromarray((np.random.RandomState(0).rand(40, 48, 3) * 255).astype(np.uint8)).save(image)
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    res = runner.invoke(app, ["infer", "--image", str(image), "--audio", str(speech), "--out", str(tmp_path / "o.mp4"),
                              "--checkpoint", f"acme/tiny-flashhead@{REV}", "--device", "cpu", "--dtype", "fp32"])
    assert res.exit_code == 0, res.output
    from vividhead.media import count_video_frames

    assert count_video_frames(tmp_path / "o.mp4") == 25
    import vividhead.cli as cli

    with pytest.raises(SystemExit) as info:  # through the real entry point: one line, exit 2
        cli.main(["infer", "--image", str(image), "--audio", str(speech), "--out", str(tmp_path / "x.mp4"),
                  "--checkpoint", f"acme/absent@{REV}", "--device", "cpu"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert info.value.code == 2 and len(errors) == 1 and "offline" in errors[0], errors


def test_compiled_ltx_encode_does_not_recompile_per_session_generator(tiny_lite):
    """``optimize()`` compiles the LTX encoder's moments, not the posterior sample with each
    session's generator (compiling ``encode`` whole splits it at the sample: 3 graphs). Dynamo with
    the ``eager`` backend (CPU): one graph for any number of generators, sampled latents unchanged."""
    import copy

    from torch._dynamo.utils import counters

    vae = copy.deepcopy(tiny_lite.vae)
    video = torch.rand(1, 3, 9, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    want = [vae.encode(video, generator=torch.Generator().manual_seed(s)) for s in (1, 2, 3)]
    torch._dynamo.reset()
    counters.clear()
    vae.encode_moments = torch.compile(vae.encode_moments, backend="eager", dynamic=False)
    got = [vae.encode(video, generator=torch.Generator().manual_seed(s)) for s in (1, 2, 3)]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


def test_compile_no_grad_keeps_one_graph_whatever_the_callers_grad_mode(tiny_lite):
    """A compiled VAE entered with autograd on and then off would recompile (dynamo guards on the
    grad mode); :func:`compile_no_grad` enters it under ``no_grad`` (eager backend, CPU)."""
    from torch._dynamo.utils import counters

    from vividhead.models.compiling import compile_no_grad

    z = torch.randn(1, tiny_lite.vae.latent_channels, 2, 2, 2, generator=torch.Generator().manual_seed(4))
    want = tiny_lite.vae.decode(z)
    torch._dynamo.reset()
    counters.clear()
    decode = compile_no_grad(tiny_lite.vae.decode, backend="eager")
    with torch.enable_grad():
        a = decode(z)
    with torch.no_grad():
        b = decode(z)
    torch.testing.assert_close(a, want, rtol=0, atol=0)
    torch.testing.assert_close(b, want, rtol=0, atol=0)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
