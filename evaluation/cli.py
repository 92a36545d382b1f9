"""``vividhead eval``: ``score``, ``run``, ``drift``, ``rollout`` and ``split``, registered on the root command by
:func:`register`.

This module imports only Typer at import time (every heavy import is inside a command), so the
``vividhead`` command lists ``eval`` even where torch or torch-fidelity are missing.

``score`` and ``run`` check their inputs and every metric's prerequisites before any model loads;
a metric whose weights or package are missing is "not computed" in the report (one line on stderr
lists them all with file and URL) unless ``--require`` names it, which makes it an error. Expected
failures are :class:`vividhead.errors.UserError`: one line, exit code 2. ``score`` exits with 1
when some videos could not be scored (their rows carry the error; the report is written).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, NoReturn, Optional

import typer

from vividhead.errors import UserError

eval_app = typer.Typer(no_args_is_help=True, add_completion=False,
                       help="Evaluate talking-head videos: FID/KID, FVD, Sync-C/Sync-D, Light-ASD, drift.")

Out = Annotated[Path, typer.Option("--out", "-o", help="Report folder (report.json, report.md, plots/).")]
Device = Annotated[str, typer.Option(help="auto (CUDA when present, else CPU) / cuda / cpu.")]
Skip = Annotated[str, typer.Option(help="Comma list of metrics not to compute: fid,kid,fvd,sync,asd.")]
Require = Annotated[str, typer.Option(
    help="Comma list of metrics that must be computed (or 'all'): a missing prerequisite of one is an error "
         "(default: such a metric is reported as not computed, with the reason).")]
Verbose = Annotated[bool, typer.Option("--verbose", help="Also show the native libraries' log lines (MediaPipe/LiteRT).")]
Random = Annotated[str, typer.Option(
    "--random-weights", help="Comma list of models run at seeded random weights (i3d, syncnet): smoke tests "
    "and cost only; their figures are marked NOT REAL.")]
FidEvery = Annotated[int, typer.Option(help="FID/KID use every N-th frame of each video (1 = all).")]
FvdSize = Annotated[int, typer.Option(help="I3D input side; the protocol is 224.")]
AsdWeights = Annotated[str, typer.Option(help="Light-ASD weights: lightasd_ava or lightasd_talkset.")]
WeightsOpt = Annotated[Optional[list[str]], typer.Option(
    "--weights", help="NAME=PATH overriding the registry lookup (e.g. syncnet_v2=/models/syncnet_v2.model); repeatable.")]
MaxFrames = Annotated[Optional[int], typer.Option(help="Score at most this many frames per video.")]


def _csv(value: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in value.split(",") if x.strip())


def _weights(items: Optional[list[str]]) -> dict[str, str]:
    out = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--weights {item!r}: expected NAME=PATH")
        out[name.strip()] = path.strip()
    return out


def _fail(exc: BaseException | str) -> NoReturn:
    """An expected failure: ``vividhead`` prints ``error: <message>`` as one line, exit code 2."""
    raise UserError(str(exc)) from None


def _check_asd_weights(name: str) -> None:
    """``--asd-weights`` names a Light-ASD checkpoint of the weights registry (``lightasd_*``)."""
    from vividhead import weights

    names = sorted(n for n in weights.REGISTRY if n.startswith("lightasd_"))
    if name not in names:
        _fail(f"--asd-weights {name!r}: use one of {', '.join(names)}")


#: Reference files read as a video (their first frame) rather than as an image.
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")


def _check_out_folder(out: Path, flag: str = "--out") -> None:
    """A report folder option must not name an existing file (checked before any work)."""
    if out.exists() and not out.is_dir():
        _fail(f"{flag} {out}: is a file; give a folder to write into")


def _check_input_file(flag: str, path: Optional[Path]) -> None:
    """A local input file option must name a file (checked before any model loads)."""
    if path is not None and not path.is_file():
        _fail(f"{flag} {path}: {'is a folder' if path.is_dir() else 'no such file'}")


def _check_image(flag: str, path: Path) -> None:
    """``path`` is a readable image (decoded once before any model loads)."""
    from vividhead.media import read_image

    _check_input_file(flag, path)
    try:
        read_image(path)
    except (OSError, ValueError, SyntaxError) as exc:  # PIL: UnidentifiedImageError is an OSError
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        _fail(f"{flag} {path}: not a readable image ({reason})")


def _expected_errors() -> tuple[type[BaseException], ...]:
    from vividhead.evaluation.fid import EvalDependencyError
    from vividhead.evaluation.loaders import MissingEvalWeights

    return (MissingEvalWeights, EvalDependencyError, FileNotFoundError, ValueError)


@dataclass(frozen=True)
class ScoreOptions:
    """The options ``score`` and ``run`` share (one definition: :func:`with_score_options` adds them
    to a command, which receives them as one ``ScoreOptions``)."""

    device: Device = "auto"
    skip: Skip = ""
    require: Require = ""
    random_weights: Random = ""
    fid_every: FidEvery = 1
    fvd_size: FvdSize = 224
    asd_weights: AsdWeights = "lightasd_ava"
    weights: WeightsOpt = None
    max_frames: MaxFrames = None
    verbose: Verbose = False

    def config(self, score_real: bool = True):
        """The :class:`~vividhead.evaluation.score.ScoreConfig` of these options, ``--device auto``
        resolved (:meth:`announce` says it) and ``--verbose`` applied.

        Raises:
            UserError: an unknown metric or model name, a bad ``--weights`` item, no CUDA device.
        """
        from vividhead.devices import resolve_device
        from vividhead.evaluation.quiet import set_verbose
        from vividhead.evaluation.score import ScoreConfig

        set_verbose(self.verbose)
        if self.max_frames is not None and self.max_frames < 1:
            _fail(f"--max-frames {self.max_frames}: must be >= 1 (leave it out for every frame)")
        _check_asd_weights(self.asd_weights)
        try:
            cfg = ScoreConfig(device="cpu", skip=_csv(self.skip), require=_csv(self.require),
                              random_weights=_csv(self.random_weights), fid_every=self.fid_every,
                              fvd_size=self.fvd_size, asd_weights=self.asd_weights, weights_paths=_weights(self.weights),
                              max_frames=self.max_frames, score_real=score_real)
        except (ValueError, typer.BadParameter) as exc:
            _fail(exc)
        return dataclasses.replace(cfg, device=resolve_device(self.device))

    def announce(self, cfg) -> None:
        """Say once on stderr which device ``--device auto`` chose."""
        if self.device == "auto":
            why = "CUDA device found" if cfg.device.startswith("cuda") else "no CUDA device"
            typer.echo(f"device: {cfg.device} (auto: {why})", err=True)


def with_score_options(command: Callable[..., None]) -> Callable[..., None]:
    """Add the :class:`ScoreOptions` to a Typer command after its own options; the command declares
    ``opts: ScoreOptions`` as its last parameter and is called with them gathered."""
    sig = inspect.signature(command, eval_str=True)
    own = [p for name, p in sig.parameters.items() if name != "opts"]
    hints = typing.get_type_hints(ScoreOptions, include_extras=True)
    fields = [f.name for f in dataclasses.fields(ScoreOptions)]
    shared = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
              for f in dataclasses.fields(ScoreOptions)]

    @functools.wraps(command)
    def wrapper(**kwargs):
        opts = ScoreOptions(**{name: kwargs.pop(name) for name in fields})
        return command(**kwargs, opts=opts)

    wrapper.__signature__ = sig.replace(parameters=own + shared)
    return wrapper


@eval_app.command("score")
@with_score_options
def score(
    generated: Annotated[str, typer.Argument(help="Folder of MP4s or shard URL(s) of generated videos.")],
    real: Annotated[str, typer.Argument(help="Folder of MP4s or shard URL(s) of the ground truth (paired by name).")],
    out: Out = Path("report"),
    score_real: Annotated[bool, typer.Option(help="Also score Sync/ASD of the real videos.")] = True,
    opts: ScoreOptions = ScoreOptions(),
) -> None:
    """FID, KID, FVD, Sync-C/Sync-D and Light-ASD of GENERATED against REAL, paired by name.

    Metrics whose weights or packages are missing are reported as not computed (--require makes
    that an error); a video that cannot be decoded becomes a row with its error and the exit code is 1.
    """
    from vividhead.evaluation.frames import list_videos, pair_names

    _check_out_folder(out)
    try:  # the inputs first: no model loads for a missing folder
        gen, ref = list_videos(generated), list_videos(real)
    except (FileNotFoundError, ValueError) as exc:
        _fail(exc)
    names, only_gen, only_real = pair_names(gen, ref)
    if not names:
        _fail(f"no video pairs to score: {len(gen)} videos in {generated}, {len(ref)} in {real}, none with the same "
              "name (pairs are matched by file stem or shard key)")
    cfg = opts.config(score_real)
    from vividhead.evaluation.report import write_report
    from vividhead.evaluation.score import load_eval_models, score_videos

    log_err = functools.partial(typer.echo, err=True)
    models = load_eval_models(cfg, log=log_err)
    opts.announce(cfg)
    if only_gen or only_real:
        log_err(f"unpaired: {len(only_gen)} generated, {len(only_real)} real (e.g. {(only_gen + only_real)[:3]})")
    try:
        report = score_videos(names, gen, ref, cfg, models, log=typer.echo)
    finally:
        models.close()
    report["inputs"] = {"generated": generated, "real": real}
    report["unpaired"] = {"generated": only_gen, "real": only_real}
    paths = write_report(report, out)
    typer.echo(f"wrote {paths['md']} and {paths['json']}")
    failed = [r for r in report["per_video"] if r.get("error")]
    if failed:
        log_err(f"{len(failed)} of {len(names)} videos not scored (their rows in {paths['md']} say why), e.g. "
                f"{failed[0]['name']}: {failed[0]['error']}")
        raise typer.Exit(1)


@eval_app.command("run")
@with_score_options
def run(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="A `vividhead train export` folder.")],
    shards: Annotated[str, typer.Option("--shards", help="Test shards: URL(s), brace pattern or curation output folder.")],
    out: Out = Path("report"),
    num_clips: Annotated[int, typer.Option(help="Test clips (split by source id).")] = 75,
    split_seed: Annotated[int, typer.Option(help="Seed of the test split.")] = 0,
    split: Annotated[Optional[Path], typer.Option(help="A split.json from `vividhead eval split` (overrides --num-clips).")] = None,
    reference_frame: Annotated[int, typer.Option(help="Clip frame used as the reference image.")] = 0,
    seed: Annotated[int, typer.Option(help="Generator noise seed.")] = 42,
    dtype: Annotated[Optional[str], typer.Option(
        help="Generator precision: bf16 / fp16 / fp32 (default: bf16 on CUDA, fp32 on the CPU).")] = None,
    fast_start: Annotated[bool, typer.Option("--fast-start", help="Short first chunk.")] = False,
    opts: ScoreOptions = ScoreOptions(),
) -> None:
    """Generate every test clip from its first frame and own audio, then score against the ground truth."""
    from vividhead.devices import default_dtype_name, parse_dtype

    if not checkpoint.is_dir():
        _fail(f"--checkpoint {checkpoint}: no such folder; give the folder `vividhead train export --out` wrote")
    if split is not None and not split.is_file():
        _fail(f"--split {split}: no such file; make one with `vividhead eval split`")
    if split is None and num_clips < 1:
        _fail(f"--num-clips {num_clips}: must be >= 1")
    if reference_frame < 0:
        _fail(f"--reference-frame {reference_frame}: must be >= 0")
    _check_out_folder(out)
    from vividhead.evaluation.split import TestSplit

    test_split = None
    if split is not None:
        try:
            test_split = TestSplit.from_json(split)
        except (ValueError, KeyError, TypeError) as exc:
            _fail(f"--split {split}: not a split.json of `vividhead eval split` ({type(exc).__name__}: {exc})")
    cfg = opts.config()
    dtype = dtype or default_dtype_name(cfg.device)
    parse_dtype(dtype)
    opts.announce(cfg)
    try:
        from vividhead.evaluation.run import run_eval

        report = run_eval(checkpoint, shards, out, cfg, split=test_split, num_clips=num_clips, split_seed=split_seed,
                          reference_frame=reference_frame, gen_seed=seed, device=cfg.device, dtype=dtype,
                          fast_start=fast_start, log=typer.echo)
    except _expected_errors() as exc:
        _fail(exc)
    typer.echo(f"wrote {out / 'report.md'} ({report['metrics']['num_videos']} clips)")
    failed = [r for r in report["per_video"] if r.get("error")]
    if failed:
        typer.echo(f"{len(failed)} clips not scored (their rows in {out / 'report.md'} say why)", err=True)
        raise typer.Exit(1)


@eval_app.command("drift")
def drift(
    video: Annotated[Path, typer.Argument(help="A long generated video (MP4).")],
    reference: Annotated[Path, typer.Option("--reference", help="The reference image (or a video: its first frame).")],
    out: Out = Path("drift"),
    audio: Annotated[Optional[Path], typer.Option(help="Driving audio (default: the video's own track).")] = None,
    window_s: Annotated[float, typer.Option(help="Window length in seconds.")] = 10.0,
    latent_norms: Annotated[Optional[Path], typer.Option(help=".npy float [N] per-frame latent norms.")] = None,
    fid_reference: Annotated[Optional[Path], typer.Option(
        help="Reference clip (MP4) for FID of each minute (torch-fidelity, GPU).")] = None,
    device: Device = "cpu",
    skip: Skip = "",
    random_weights: Random = "",
    asd_weights: AsdWeights = "lightasd_ava",
    weights: WeightsOpt = None,
) -> None:
    """Per-window drift of a long generation (colour, sharpness, Light-ASD, Sync-C/D, latent norm) as a plot."""
    from vividhead.devices import resolve_device

    # every option is checked before any model loads
    if window_s <= 0:
        _fail(f"--window-s {window_s}: must be > 0")
    _check_asd_weights(asd_weights)
    _check_out_folder(out)
    for flag, path in (("VIDEO", video), ("--audio", audio), ("--latent-norms", latent_norms),
                       ("--fid-reference", fid_reference)):
        _check_input_file(flag, path)
    if reference.suffix.lower() in VIDEO_SUFFIXES:
        _check_input_file("--reference", reference)
    else:
        _check_image("--reference", reference)
    device = resolve_device(device)
    detector = None
    try:
        import numpy as np

        from vividhead.evaluation import loaders
        from vividhead.evaluation.drift import drift_metrics, fid_per_window, plot_drift
        from vividhead.evaluation.frames import read_video
        from vividhead.evaluation.report import render_drift_markdown, write_json

        skipped, rnd, paths = set(_csv(skip)), set(_csv(random_weights)), _weights(weights)
        records, asd_model, syncnet, features = {}, None, None, None
        if "asd" not in skipped:
            asd_model, rec = loaders.load_asd(paths.get(asd_weights), device, asd_weights)
            records[rec.name] = rec.to_dict()
        if "sync" not in skipped:
            syncnet, rec = loaders.load_syncnet(paths.get("syncnet_v2"), device, 0 if "syncnet" in rnd else None)
            records[rec.name] = rec.to_dict()
        if asd_model is not None or syncnet is not None:
            detector, rec = loaders.face_detector(paths.get("face_mediapipe_detector"))
            records[rec.name] = rec.to_dict()
        if fid_reference is not None:
            from vividhead.evaluation.fid import InceptionFeatures

            rec = loaders.inception_weights(paths.get("inception_fid"))
            features = InceptionFeatures(rec.path, device)
            records[rec.name] = rec.to_dict()
        v = read_video(video, audio)
        if reference.suffix.lower() in VIDEO_SUFFIXES:
            ref = read_video(reference, max_frames=1).frames[0]
        else:
            from vividhead.media import read_image

            ref = read_image(reference)
        norms = np.load(latent_norms, allow_pickle=False) if latent_norms else None
        rows = drift_metrics(v.frames, v.audio, ref, window_s, asd_model=asd_model, syncnet=syncnet,
                             detector=detector, latent_norms=norms, device=device)
        if features is not None:
            for row, fid in zip(rows, fid_per_window(v.frames, read_video(fid_reference).frames, features, window_s)):
                row["fid_vs_reference"] = fid
    except _expected_errors() as exc:
        _fail(exc)
    finally:
        if detector is not None:
            detector.close()
    out.mkdir(parents=True, exist_ok=True)
    fake = ("sync_c", "sync_d") if records.get("syncnet_v2", {}).get("random_weights") else ()
    plot_drift(rows, out / "drift.png", title=video.name, not_real=fake)
    report = {"inputs": {"video": str(video), "reference": str(reference), "audio": str(audio or video)},
              "window_s": window_s, "rows": rows, "weights": records,
              "random_weights": sorted(k for k, r in records.items() if r.get("random_weights"))}
    write_json(report, out / "drift.json")
    (out / "drift.md").write_text(render_drift_markdown(report, "drift.png"))
    typer.echo(f"wrote {out / 'drift.md'} ({len(rows)} windows)")


@eval_app.command("split")
def split(
    manifest: Annotated[str, typer.Argument(help="The curation output's manifest.parquet.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="split.json to write.")] = Path("split.json"),
    num_clips: Annotated[int, typer.Option(help="Test clips.")] = 75,
    seed: Annotated[int, typer.Option(help="Ranking seed.")] = 0,
    group_column: Annotated[str, typer.Option(help="Manifest column whose groups are held out whole.")] = "source_id",
) -> None:
    """A fixed test split by source id; train with ClipFilter(exclude_keys=split's train_exclude_keys)."""
    if num_clips < 1:
        _fail(f"--num-clips {num_clips}: must be >= 1")
    if out.is_dir():
        _fail(f"--out {out}: is a folder; give the split.json file to write")
    if Path(manifest).is_dir():
        _fail(f"MANIFEST {manifest}: is a folder; give its manifest.parquet")
    try:
        from vividhead.evaluation.split import split_from_manifest

        s = split_from_manifest(manifest, num_clips, seed, group_column)
    except _expected_errors() as exc:
        _fail(exc)
    s.to_json(out)
    typer.echo(f"wrote {out}: {len(s.test_keys)} test clips from {len(s.test_groups)} of {s.num_groups_total} "
               f"groups; {len(s.train_exclude_keys)} clips to exclude from training")


@eval_app.command("rollout")
def rollout(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="A `vividhead train export` folder (the generator).")],
    image: Annotated[Path, typer.Option("--image", help="Reference portrait (any size; resized and centre-cropped).")],
    audio: Annotated[Path, typer.Option("--audio", help="Long speech file (e.g. the fixtures' 60 s "
                                                        "speech_en_60s_16k.wav).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for rollout.mp4, drift.json, drift.png.")],
    chunks: Annotated[Optional[int], typer.Option(help="Chunks to generate (default: the whole audio).")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when present, else CPU) / cuda / cuda:N / cpu.")] = "auto",
    dtype: Annotated[Optional[str], typer.Option(
        help="bf16 / fp16 / fp32 (default: bf16 on CUDA, fp32 on the CPU).")] = None,
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 42,
    asd: Annotated[bool, typer.Option("--asd/--no-asd", help="Light-ASD score per chunk (when its weights exist).")] = True,
) -> None:
    """Long-horizon check: stream a generator for N chunks and plot per-chunk drift.

    Drift per chunk: colour and sharpness against the reference, latent norm, Light-ASD."""
    from vividhead.devices import default_dtype_name, parse_dtype, resolve_device
    from vividhead.evaluation.long_rollout import long_rollout

    # every option is checked before the generator loads
    if chunks is not None and chunks < 1:
        _fail(f"--chunks {chunks}: must be >= 1 (leave it out for the whole audio)")
    _check_out_folder(out)
    _check_image("--image", image)
    _check_input_file("--audio", audio)
    resolved = resolve_device(device)
    dtype = dtype or default_dtype_name(resolved)
    torch_dtype = parse_dtype(dtype)
    if device == "auto":
        typer.echo(f"device: {resolved} (auto: {'CUDA device found' if resolved.startswith('cuda') else 'no CUDA device'})",
                   err=True)
    try:
        report = long_rollout(checkpoint, image, audio, out, num_chunks=chunks, device=resolved, dtype=torch_dtype,
                              seed=seed, asd=asd)
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)
    last = report["rows"][-1]
    typer.echo(f"{report['chunks']} chunks, {report['frames']} frames; last chunk: colour dE "
               f"{last['color_delta_e']:.2f}, sharpness ratio {last['sharpness_ratio']:.2f}, latent norm "
               f"{last.get('latent_norm', float('nan')):.3f}; {report['paths']['png']}")


def register(app: typer.Typer) -> None:
    """Add the ``eval`` command group to the ``vividhead`` Typer app, and ``rollout`` to its ``train``
    group too (``vividhead train rollout``, the command's first name, kept as an alias)."""
    app.add_typer(eval_app, name="eval")
    for group in app.registered_groups:  # the root command registers training before evaluation
        train = group.typer_instance
        if group.name == "train" and train is not None and all(c.name != "rollout" for c in train.registered_commands):
            train.command("rollout", help="The same as `vividhead eval rollout`.")(rollout)
