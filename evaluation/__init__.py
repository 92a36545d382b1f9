"""Evaluation of talking-head generators: FID/KID, FVD, Sync-C/Sync-D, Light-ASD and drift
(``vividhead eval``; protocol and choices in docs/evaluation.md).

Modules import their heavy dependencies lazily where they are optional (torch-fidelity only in
:mod:`~vividhead.evaluation.fid`); :mod:`~vividhead.evaluation.cli` imports only Typer.
The long-horizon check of a trainer uses :func:`vividhead.evaluation.drift.drift_metrics`
and :func:`~vividhead.evaluation.drift.plot_drift`.
"""
