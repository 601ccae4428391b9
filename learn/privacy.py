"""Differentially private training (DP-SGD through opacus): one shopper is one example.

:func:`learn.train.train` calls :func:`make_private` when ``TrainConfig.dp_epsilon`` is set. What
is private is the **user tower**: each shopper's sequence is one example (``training_examples``
keeps one per shopper), sampled with Poisson sampling, its per-example gradient clipped to
``dp_max_grad_norm`` and Gaussian noise added, with the noise calibrated by opacus'
``make_private_with_epsilon`` so that the whole planned run spends at most ``(epsilon, delta)``.

Two parts of the network are **frozen** under DP, because their gradients are not a sum of
per-shopper terms:

* the item tower: it maps every product title to its index vector once per batch, for all
  shoppers together (its input's first dimension is the catalogue, not the batch). It keeps the
  weights it started from (the serving model's in a warm start; the identity from scratch), so
  the product space is not learned from private data at all;
* product id vectors (``id_emb``, when the model has them), for the same reason;
* ``logit_scale`` (a bare parameter opacus has no per-sample rule for).

Every other layer is a ``Linear``, ``Embedding`` or ``LayerNorm`` (the attention is written out
with plain ``Linear`` layers; there is no ``nn.MultiheadAttention`` to replace), which opacus'
hooks support. The loss is the sum of the shopper's next-product cross-entropies over their
positions, averaged over the batch (opacus' ``loss_reduction="mean"``), and the candidates are the
whole catalogue (``negatives="full"``): in-batch negatives would mix shoppers in one example.

Validation NDCG@10 still picks the best epoch, from the shoppers' own validation targets; that
selection is not accounted for (common practice, said here so nobody is surprised). The epsilon
reported is the one spent by every step taken, from opacus' accountant.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from engines.errors import MissingExtraError

log = logging.getLogger(__name__)

ACCOUNTANT = "prv"   # privacy random variables: tighter than RDP (about 7% less noise at the same epsilon)


def require_opacus():
    try:
        import opacus
    except ImportError as exc:
        raise MissingExtraError("opacus", "privacy", exc) from exc
    return opacus


@dataclass
class PrivateRun:
    """The wrapped optimizer, the Poisson-sampled batches and the accountant of one DP run."""

    engine: object
    module: object          # opacus' GradSampleModule around the model (hooks on its layers)
    optimizer: object       # opacus' DPOptimizer: clips per example, adds noise
    loader: object          # batches of example indices, Poisson-sampled
    delta: float
    target_epsilon: float
    max_grad_norm: float

    def batches(self) -> list[list[int]]:
        out = []
        for idx in self.loader:
            if not isinstance(idx, list):   # opacus' stand-in for an empty batch (empty tensors)
                continue
            # Poisson sampling may draw an empty batch; skipping it is a data-dependent choice the
            # accountant does not see, with probability about exp(-expected batch): below 1e-100
            # at 256 shoppers a batch, so it is skipped rather than taken as a noise-only step
            if idx:
                out.append(idx)
        return out

    def spent(self) -> dict:
        noisy = float(self.optimizer.noise_multiplier) > 0
        eps = float(self.engine.accountant.get_epsilon(delta=self.delta)) if noisy else math.inf
        return {"epsilon": round(eps, 4), "delta": self.delta, "target_epsilon": self.target_epsilon,
                "noise_multiplier": round(float(self.optimizer.noise_multiplier), 4),
                "max_grad_norm": self.max_grad_norm, "sample_rate": round(float(self.loader.sample_rate), 6),
                "steps": int(sum(h[-1] for h in self.engine.accountant.history)), "accountant": ACCOUNTANT, "unit": "shopper",
                "frozen": ["item_tower", "id_emb", "logit_scale"]}

    def close(self) -> None:
        """Take opacus' hooks and per-sample gradients off the model."""
        self.module.remove_hooks()
        for p in self.module._module.parameters():
            if hasattr(p, "grad_sample"):
                p.grad_sample = None


class _Indices:
    """The examples' positions as a map-style dataset (opacus samples from it)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        import torch

        return (torch.tensor(i),)       # opacus reads the sample's structure from a tuple of tensors


def _collate(batch):
    return [int(sample[0]) for sample in batch]


def make_private(model, optimizer, n_examples: int, cfg) -> PrivateRun:
    """Freeze what cannot be private, wrap model and optimizer, and calibrate the noise."""
    require_opacus()
    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader

    for shared in (model.item_tower, getattr(model, "id_emb", None)):
        if shared is not None:
            shared.requires_grad_(False)
    model.logit_scale.requires_grad_(False)
    # the seed fixes which shoppers each Poisson batch draws and the noise (secure_mode off: the
    # noise comes from torch's generator, fine for measuring, not for a cryptographic guarantee)
    loader = DataLoader(_Indices(n_examples), batch_size=min(cfg.batch_size, n_examples), collate_fn=_collate,
                        generator=torch.Generator().manual_seed(cfg.seed))
    engine = PrivacyEngine(accountant=ACCOUNTANT, secure_mode=False)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    if math.isinf(cfg.dp_epsilon):
        # no noise: the mechanism's other costs alone (frozen item tower, clipping, Poisson batches),
        # the reference the DP runs are measured against; nothing private about it
        module, opt, dp_loader = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=0.0,
            max_grad_norm=cfg.dp_max_grad_norm, loss_reduction="mean", poisson_sampling=True,
            noise_generator=generator)
    else:
        module, opt, dp_loader = engine.make_private_with_epsilon(
            module=model, optimizer=optimizer, data_loader=loader, target_epsilon=cfg.dp_epsilon,
            target_delta=cfg.dp_delta, epochs=cfg.epochs, max_grad_norm=cfg.dp_max_grad_norm,
            loss_reduction="mean", poisson_sampling=True, noise_generator=generator)
    log.info("DP-SGD: target epsilon %.3g delta %.1e over %d epochs: noise multiplier %.3f, clip %.2f, "
             "sample rate %.4f", cfg.dp_epsilon, cfg.dp_delta, cfg.epochs, opt.noise_multiplier,
             cfg.dp_max_grad_norm, dp_loader.sample_rate)
    return PrivateRun(engine, module, opt, dp_loader, cfg.dp_delta, cfg.dp_epsilon, cfg.dp_max_grad_norm)
