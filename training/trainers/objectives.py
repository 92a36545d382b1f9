"""Stage 2's generator objectives: what the generator is trained to minimise on chunk k's output.

One :class:`GeneratorObjective` per ``distill.mode`` (like Self-Forcing's ``model/dmd.py`` beside
its other losses, or a torchtitan ``TrainSpec``'s loss function). The trainer
(:class:`~vividhead.training.trainers.distill.DistillTrainer`) owns the rollout, the networks and
the update; :meth:`DistillTrainer.generator_loss` hands the rollout's output to the objective of the
configured mode and back-propagates its ``loss``. Shipped:

- ``oracle`` (:class:`OracleDMD`, FlashHead §3.2 stage 2, eq. 4-5): DMD with ``real_score``
  conditioned on the ground-truth motion latents, plus ``lambda * ||z_student^(k) - z_gt^(k)||^2``.
- ``self_correcting`` (:class:`SelfCorrectingDMD`, LiveTalk §2.2 stage 2, eq. 2-3): DMD with
  ``real_score`` conditioned on the generator's own motion latents, noised like the rest of the
  sample; no loss on motion latents (LiveTalk Table 3's best row).

**Adding a loss** is one subclass of :class:`GeneratorObjective` (its ``__call__``, its
``metric_names``) and one :func:`register_objective` under a new mode name; ``distill.mode`` then
accepts it (the config checks modes against :data:`OBJECTIVES`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar

import torch

from vividhead.flow_matching import add_noise, motion_loss_mask, overwrite_motion, sample_training_sigmas

if TYPE_CHECKING:  # distill.py imports this module, and distill_config.py checks modes against it
    from vividhead.training.trainers.distill import DistillTrainer, RolloutOutput, RolloutWindow
    from vividhead.training.trainers.distill_config import DistillSection


# ----------------------------------------------------------------------------------------------
# The DMD loss
# ----------------------------------------------------------------------------------------------
@dataclass
class DMDLoss:
    """Result of :func:`distribution_matching_loss`.

    Attributes:
        loss: float32 scalar with graph through ``x0``: ``0.5 * mean_keep (x0 - stopgrad(x0 - grad))^2``.
        grad: float32 ``[B, C, F, h, w]`` the normalised DMD gradient (zero on motion slots, no graph).
        grad_abs: float32 scalar: mean ``|grad|`` over generated slots (for logging).
    """

    loss: torch.Tensor
    grad: torch.Tensor
    grad_abs: torch.Tensor


def masked_mean(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` ``[B, C, F, h, w]`` over the slots where ``keep`` ``[B, 1, F, 1, 1]`` is 1 (per sample, then batch)."""
    b, c, _, h, w = x.shape
    count = (keep.sum(dim=(1, 2, 3, 4)) * c * h * w).clamp(min=1)
    return ((x * keep).sum(dim=(1, 2, 3, 4)) / count).mean()


def distribution_matching_loss(x0: torch.Tensor, p_fake: torch.Tensor, p_real: torch.Tensor,
                               keep: torch.Tensor) -> DMDLoss:
    """The DMD loss (FlashHead eq. 4, LiveTalk eq. 2) in the DMD2 / Self-Forcing form.

    ``grad = (p_fake - p_real) / mean|x0 - p_real|`` (the per-sample normaliser of DMD eq. 8, over
    generated slots), then ``0.5 * MSE(x0, stopgrad(x0 - grad))``, whose gradient with respect to
    ``x0`` is ``grad / N``: the score difference ``s_real - s_fake`` pushed into the generator.

    Args:
        x0: float32 ``[B, C, F, h, w]`` the generator's output (with graph).
        p_fake, p_real: float32 ``[B, C, F, h, w]`` x0 predictions of ``fake_score`` and of the
            (guided) ``real_score`` at the same noised sample (no graph).
        keep: float32 ``[B, 1, F, 1, 1]``: 1 on generated slots, 0 on motion slots (no loss).

    Returns:
        :class:`DMDLoss`.
    """
    with torch.no_grad():
        b, c, _, h, w = x0.shape
        count = (keep.sum(dim=(1, 2, 3, 4)) * c * h * w).clamp(min=1)
        norm = ((x0.detach() - p_real).abs() * keep).sum(dim=(1, 2, 3, 4)) / count  # [B]
        grad = torch.nan_to_num((p_fake - p_real) * keep / norm.view(b, 1, 1, 1, 1).clamp(min=1e-12))
        target = (x0.detach() - grad).detach()
    loss = 0.5 * masked_mean((x0 - target).pow(2), keep)
    return DMDLoss(loss, grad, masked_mean(grad.abs(), keep))


# ----------------------------------------------------------------------------------------------
# The objective seam
# ----------------------------------------------------------------------------------------------
class GeneratorObjective:
    """One generator objective of stage 2 (one ``distill.mode``).

    An instance is built per call from the run's ``distill`` section (cheap, stateless); every
    random draw goes through ``trainer.generator`` (checkpointed), so a resumed run draws the same.

    Attributes:
        metric_names: keys of the returned dict the trainer logs on generator steps (scalars, no
            graph), besides ``generator_loss`` (the returned ``loss``).
        reduced_metrics: those of them averaged over ranks before logging.

    Args:
        cfg: the run's :class:`~vividhead.training.trainers.distill_config.DistillSection`.
    """

    metric_names: ClassVar[tuple[str, ...]] = ()
    reduced_metrics: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: DistillSection) -> None:
        self.cfg = cfg

    def __call__(self, trainer: DistillTrainer, window: RolloutWindow, out: RolloutOutput) -> dict[str, torch.Tensor]:
        """The objective on chunk k's output.

        Args:
            trainer: the trainer (``predict(role, x_t, sigma, ctx, ref, guidance)`` for the scores'
                x0 predictions, ``generator`` for draws, ``env.device``).
            window: the ground-truth window (``context(j)``, ``ref_latent``, ``gt_latents(j)``).
            out: the rollout: ``x0`` float32 ``[1, C, F, h, w]`` with the graph of step t' of chunk
                k, ``motion`` float32 ``[1, C, M, h, w]`` its motion latents, ``chunk`` (0-based k).

        Returns:
            ``loss`` (float32 scalar, with graph through ``out.x0``), every name of
            :attr:`metric_names` (float32 scalars, no graph), and any draws worth returning to
            tests (no graph).
        """
        raise NotImplementedError

    def draw_sigma_and_noise(self, trainer: DistillTrainer, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A noise level (float32 ``[1]``, uniform on the shifted schedule, clamped to ``[min_sigma,
        max_sigma]``) and Gaussian noise shaped like ``x0`` (float32 ``[1, C, F, h, w]``), in that
        order from ``trainer.generator``."""
        d, dev = self.cfg, trainer.env.device
        sigma = sample_training_sigmas(1, shift=d.timestep_shift, min_sigma=d.min_sigma, max_sigma=d.max_sigma,
                                       generator=trainer.generator, device=dev)
        noise = torch.randn(x0.shape, generator=trainer.generator, device=dev)
        return sigma, noise


class DMDObjective(GeneratorObjective):
    """DMD (FlashHead eq. 4, LiveTalk eq. 2) on chunk k's ``x0``: the sample is noised on every slot
    to one drawn ``sigma`` (``x_s``); ``fake_score`` sees ``x_s`` with the predicted motion latents
    clean, ``real_score`` (audio CFG, ``guidance_scale``) sees ``x_s`` with the motion slots of
    :meth:`real_score_input`; motion slots never take a loss. Subclasses choose the teacher's motion
    slots and an extra term (:meth:`regression`).

    Returns (``__call__``): ``loss``, ``dmd_loss``, ``reg_loss``, ``dmd_grad_abs``, ``reg_grad_abs``
    (float32 scalars), ``sigma`` (``[1]``) and ``noise`` (``[1, C, F, h, w]``).
    """

    metric_names = ("dmd_loss", "reg_loss", "dmd_grad_abs", "reg_grad_abs")
    reduced_metrics = ("dmd_loss", "reg_loss")

    def ground_truth(self, window: RolloutWindow, out: RolloutOutput) -> torch.Tensor | None:
        """float32 ``[1, C, F, h, w]`` ground-truth latents of chunk k, when the objective uses them."""
        return None

    def real_score_input(self, x_s: torch.Tensor, out: RolloutOutput, gt: torch.Tensor | None) -> torch.Tensor:
        """``real_score``'s input ``[1, C, F, h, w]`` from ``x_s`` (every slot noised)."""
        raise NotImplementedError

    def regression(self, dmd: DMDLoss, x0: torch.Tensor, gt: torch.Tensor | None,
                   keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, reg_loss, reg_grad_abs)``: the total loss from the DMD one, and the extra term."""
        zero = torch.zeros((), device=x0.device)
        return dmd.loss, zero, zero

    def __call__(self, trainer: DistillTrainer, window: RolloutWindow, out: RolloutOutput) -> dict[str, torch.Tensor]:
        d, dev = self.cfg, trainer.env.device
        x0 = out.x0
        keep = motion_loss_mask(x0.shape[2], torch.tensor([out.num_motion], device=dev))
        sigma, noise = self.draw_sigma_and_noise(trainer, x0)
        ctx, ref = window.context(out.chunk), window.ref_latent
        gt = self.ground_truth(window, out)
        with torch.no_grad():
            x_s = add_noise(x0.detach(), noise, sigma)  # every slot noised
            x_fake = overwrite_motion(x_s, out.motion)  # predicted motion latents, clean
            x_real = self.real_score_input(x_s, out, gt)
            p_fake = trainer.predict("fake_score", x_fake, sigma, ctx, ref)
            p_real = trainer.predict("real_score", x_real, sigma, ctx, ref, d.guidance_scale)
        dmd = distribution_matching_loss(x0, p_fake, p_real, keep)
        loss, reg, reg_grad = self.regression(dmd, x0, gt, keep)
        return {"loss": loss, "dmd_loss": dmd.loss.detach(), "reg_loss": reg.detach(),
                "dmd_grad_abs": dmd.grad_abs, "reg_grad_abs": reg_grad, "sigma": sigma, "noise": noise}


class OracleDMD(DMDObjective):
    """``oracle`` (FlashHead §3.2 stage 2, Oracle-Guided Bidirectional Distillation): ``real_score``
    sees the ground-truth motion latents of chunk k, clean (eq. 4), and the loss adds
    ``lambda * ||z_student^(k) - z_gt^(k)||^2`` (eq. 5, a mean over generated slots; ``lambda`` =
    ``distill.regression_weight``). ``reg_grad_abs`` logs ``mean |2 lambda (x0 - z_gt)|``, the
    regression's gradient, beside ``dmd_grad_abs``."""

    def ground_truth(self, window: RolloutWindow, out: RolloutOutput) -> torch.Tensor:
        return window.gt_latents(out.chunk)

    def real_score_input(self, x_s: torch.Tensor, out: RolloutOutput, gt: torch.Tensor | None) -> torch.Tensor:
        return overwrite_motion(x_s, gt[:, :, : out.num_motion])

    def regression(self, dmd: DMDLoss, x0: torch.Tensor, gt: torch.Tensor | None,
                   keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w = self.cfg.regression_weight
        zero = torch.zeros((), device=x0.device)
        reg, reg_grad = zero, zero
        if w > 0:
            reg = masked_mean((x0 - gt).pow(2), keep)
            reg_grad = masked_mean((2 * w * (x0.detach() - gt)).abs(), keep)
        return dmd.loss + w * reg, reg, reg_grad


class SelfCorrectingDMD(DMDObjective):
    """``self_correcting`` (LiveTalk §2.2 stage 2, Self-Correcting Bidirectional Distillation, eq.
    2-3): ``real_score`` sees the generator's predicted motion latents noised like the rest (``x_s``
    as is); DMD alone, no loss on motion latents (``reg_loss`` and ``reg_grad_abs`` log 0)."""

    def real_score_input(self, x_s: torch.Tensor, out: RolloutOutput, gt: torch.Tensor | None) -> torch.Tensor:
        return x_s


# ----------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------
#: Every objective, by ``distill.mode``, in registration order.
OBJECTIVES: dict[str, type[GeneratorObjective]] = {}


def register_objective(mode: str) -> Callable[[type[GeneratorObjective]], type[GeneratorObjective]]:
    """Class decorator: register a :class:`GeneratorObjective` subclass as ``distill.mode: <mode>``.

    Raises:
        ValueError: ``mode`` is already registered.
    """

    def add(cls: type[GeneratorObjective]) -> type[GeneratorObjective]:
        if mode in OBJECTIVES:
            raise ValueError(f"generator objective {mode!r} is already registered")
        OBJECTIVES[mode] = cls
        return cls

    return add


def make_objective(cfg: DistillSection) -> GeneratorObjective:
    """The objective of ``cfg.mode`` over ``cfg``.

    Raises:
        KeyError: an unknown mode, naming the known ones (the config rejects it before).
    """
    try:
        cls = OBJECTIVES[cfg.mode]
    except KeyError:
        raise KeyError(f"unknown distill.mode {cfg.mode!r} (known: {', '.join(OBJECTIVES)})") from None
    return cls(cfg)


register_objective("oracle")(OracleDMD)
register_objective("self_correcting")(SelfCorrectingDMD)

__all__ = [
    "OBJECTIVES",
    "DMDLoss",
    "DMDObjective",
    "GeneratorObjective",
    "OracleDMD",
    "SelfCorrectingDMD",
    "distribution_matching_loss",
    "make_objective",
    "masked_mean",
    "register_objective",
]
