"""Train the session encoder contrastively on next-product prediction.

Every position of a shopper's training sequence predicts the product touched next (searches are
inputs, never targets). Negatives are either every product of the catalogue (``full``: a softmax
over all index vectors, cheap for catalogues of tens of thousands) or the other targets of the
batch (``inbatch``), optionally with hard negatives: products whose titles are nearest the target's.
With ``exclude_history`` each position's softmax leaves out what the shopper touched before it, as
serving leaves it out of the ranking. Early stopping on validation NDCG@10 (full ranking); the best
epoch's weights are kept. :func:`refit` then trains the chosen recipe again on every event before
the test targets, the validation targets included, for the epochs validation chose.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from learn.data import SEARCH, Interactions, UserSequence
from learn.split import Split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    d_model: int = 128
    layers: int = 2
    heads: int = 2
    ffn: int = 256
    max_len: int = 50
    dropout: float = 0.2
    item_tower: bool = True
    item_hidden: int = 512
    id_embeddings: bool = False      # an id vector per training product next to its title's
    lr: float = 1e-3
    lr_schedule: str = "constant"    # "constant" | "cosine" (to 0 over ``epochs``)
    clip_norm: float = 1.0
    weight_decay: float = 0.0
    batch_size: int = 256
    epochs: int = 40
    patience: int = 4                # evaluations (every ``eval_every`` epochs) without a better one
    eval_every: int = 1              # validate every this many epochs (and after the last)
    negatives: str = "full"          # "full" | "inbatch"
    exclude_history: bool = False    # with "full": what the shopper already touched is no negative (as in serving)
    hard_negatives: int = 0          # per target, with "inbatch": drawn from its nearest titles
    hard_pool: int = 50
    seed: int = 0
    threads: int = 2
    device: str = "cpu"
    max_minutes: float = 0.0         # 0: no time limit
    max_cpu_minutes: float = 0.0     # CPU time of this process, all threads (the recipe search's budget); 0: none
    dp_epsilon: float | None = None  # DP-SGD (learn.privacy, opacus): the run's target epsilon; None: off
    dp_delta: float = 1e-5
    dp_max_grad_norm: float = 1.0    # per-shopper gradient clip under DP

    def model_config(self, text_dim: int, n_items: int = 0):
        from engines.session_network import ModelConfig

        return ModelConfig(text_dim=text_dim, d_model=self.d_model, layers=self.layers, heads=self.heads,
                           ffn=self.ffn, max_len=self.max_len, dropout=self.dropout,
                           item_tower=self.item_tower, item_hidden=self.item_hidden,
                           item_ids=n_items if self.id_embeddings else 0)

    def validate(self) -> None:
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', not {self.lr_schedule!r}")
        if self.negatives not in ("full", "inbatch"):
            raise ValueError(f"negatives must be 'full' or 'inbatch', not {self.negatives!r}")
        if self.exclude_history and self.negatives != "full":
            raise ValueError("exclude_history goes with --negatives full")
        if self.hard_negatives and self.negatives != "inbatch":
            raise ValueError("hard negatives go with --negatives inbatch")
        for name in ("d_model", "layers", "heads", "max_len", "batch_size", "epochs", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.dp_epsilon is not None:
            if not self.dp_epsilon > 0 or not 0 < self.dp_delta < 1 or not self.dp_max_grad_norm > 0:
                raise ValueError("DP needs epsilon > 0, 0 < delta < 1 and a positive max grad norm")
            if self.negatives != "full":
                raise ValueError("DP training needs --negatives full (in-batch negatives mix shoppers)")


@dataclass
class TrainResult:
    model: object
    config: TrainConfig
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_valid: dict = field(default_factory=dict)
    seconds: float = 0.0
    privacy: dict | None = None      # under DP: the (epsilon, delta) actually spent, noise, clip, steps


def training_examples(train: list[UserSequence], max_len: int) -> list[UserSequence]:
    """Each shopper's last ``max_len + 1`` events; sequences with no product after the first dropped."""
    out = []
    for s in train:
        s = UserSequence(s.user, s.tokens[-(max_len + 1):], s.kinds[-(max_len + 1):], s.times[-(max_len + 1):])
        if len(s) >= 2 and np.any(s.kinds[1:] != SEARCH):
            out.append(s)
    return out


def _batches(examples: list[UserSequence], batch_size: int, rng: np.random.Generator) -> list[list[int]]:
    """Batches of similar length (little padding), in random order."""
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i]), rng.random()))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def _collate(examples: list[UserSequence], idx: list[int], max_len: int):
    from engines.session_network import pack

    seqs = [examples[i] for i in idx]
    tok, kin, gap = pack([s.tokens[:-1] for s in seqs], [s.kinds[:-1] for s in seqs],
                         [s.times[:-1] for s in seqs], max_len)
    labels = np.full(tok.shape, -1, dtype=np.int64)
    n = tok.shape[1]
    for row, s in enumerate(seqs):
        nxt = np.where(s.kinds[1:] != SEARCH, s.tokens[1:], -1)[-n:]
        labels[row, n - len(nxt):] = nxt
    return tok, kin, gap, labels


def nearest_titles(text_vecs: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """``(N, k)`` indices of each item's most similar other titles (hard-negative pool)."""
    n = len(text_vecs)
    k = min(k, n - 1)
    out = np.zeros((n, k), dtype=np.int64)
    for i in range(0, n, chunk):
        s = text_vecs[i:i + chunk] @ text_vecs.T
        s[np.arange(len(s)), np.arange(i, i + len(s))] = -np.inf
        out[i:i + chunk] = np.argpartition(-s, k - 1, axis=1)[:, :k]
    return out


def train(data: Interactions, text_vecs: np.ndarray, split: Split, cfg: TrainConfig = TrainConfig(),
          *, init=None, progress: bool = True, validate: bool = True, stop_after: int | None = None) -> TrainResult:
    """Fit a :class:`SessionTransformer`. ``text_vecs`` are the texts' vectors (items, then queries).

    ``init``: a model (same architecture) whose weights training continues from. ``validate=False``
    (a refit, whose training data holds the validation targets): no validation, the last epoch is
    kept. ``stop_after``: end after this many epochs of the ``cfg.epochs`` schedule."""
    import torch
    from torch.nn import functional as F

    from engines.session_network import SessionTransformer
    from learn.evaluate import fold_ranks
    from learn.metrics import summarise

    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = torch.device(cfg.device)
    n_items = data.n_items
    model = SessionTransformer(cfg.model_config(text_vecs.shape[1], data.n_items))
    if init is not None:
        if init.cfg != model.cfg:
            raise ValueError(f"cannot continue from a model with another configuration: {init.cfg}")
        model.load_state_dict(init.state_dict())
    model = model.to(device)
    texts = torch.from_numpy(np.ascontiguousarray(text_vecs, dtype=np.float32)).to(device)
    token_ids = torch.arange(len(text_vecs), device=device)      # items first: a text's index is its id
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    examples = training_examples(split.train, cfg.max_len)
    if not examples:
        raise ValueError("no training sequence has two events or more")
    hard = nearest_titles(text_vecs[:n_items], cfg.hard_pool) if cfg.hard_negatives else None
    private = None
    if cfg.dp_epsilon is not None:
        from learn.privacy import make_private

        private = make_private(model, opt, len(examples), cfg)   # freezes the item tower and logit_scale
        opt = private.optimizer
        with torch.no_grad():
            frozen_space = model.items(texts, token_ids)
    steps = cfg.epochs * len(_batches(examples, cfg.batch_size, np.random.default_rng(0)))
    sched = None
    if cfg.lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps)))
    result = TrainResult(model, cfg)
    best_state, bad, t0, c0 = None, 0, time.perf_counter(), time.process_time()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        batches = private.batches() if private is not None else _batches(examples, cfg.batch_size, rng)
        it = batches
        if progress:
            from tqdm import tqdm

            it = tqdm(batches, desc=f"epoch {epoch}", unit="batch", leave=False)
        total, count = 0.0, 0
        for idx in it:
            tok, kin, gap, labels = (torch.from_numpy(a).to(device) for a in _collate(examples, idx, cfg.max_len))
            # every product and query, index space
            space = frozen_space if private is not None else model.items(texts, token_ids)
            vecs = torch.where((tok >= 0)[..., None], space[tok.clamp(min=0)], 0.0)
            users = model.encode(vecs, kin, gap)
            keep = labels >= 0
            u, y = users[keep], labels[keep]
            if cfg.negatives == "full":
                cand, target = space[:n_items], y
            else:
                pool = y
                if hard is not None:
                    pick = rng.integers(0, hard.shape[1], size=(len(y), cfg.hard_negatives))
                    pool = torch.cat([y, torch.from_numpy(hard[y.cpu().numpy()[:, None], pick].ravel()).to(device)])
                uniq, inverse = torch.unique(pool, return_inverse=True)
                cand, target = space[uniq], inverse[:len(y)]
            logits = (u @ cand.T) * model.logit_scale.exp().clamp(max=100.0)
            if cfg.exclude_history:
                logits = _without_history(logits, tok, keep, y, n_items)
            if private is None:
                loss = F.cross_entropy(logits, target)
            else:   # one shopper is one example: the sum over their positions, averaged over shoppers
                loss = F.cross_entropy(logits, target, reduction="sum") / len(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if private is None:       # under DP, opacus clips each shopper's gradient instead
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            opt.step()
            if private is not None:
                loss = loss * len(idx) / max(len(y), 1)     # the per-position figure, for the log
            if sched is not None:
                sched.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
            if progress:
                it.set_postfix(loss=f"{total / count:.3f}")
        row = {"epoch": epoch, "loss": total / max(count, 1)}
        out_of_time = _out_of_time(cfg, t0, c0)
        if not validate:
            row.update(seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0)
            result.history.append(row)
            result.best_epoch = epoch
            log.info("epoch %d: loss %.4f (%.0fs)", epoch, row["loss"], row["seconds"])
            if epoch == stop_after or out_of_time:
                break
            continue
        if epoch % cfg.eval_every and epoch < cfg.epochs and not out_of_time:     # no validation this epoch
            row.update(seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0)
            result.history.append(row)
            log.info("epoch %d: loss %.4f (%.0fs)", epoch, row["loss"], row["seconds"])
            continue
        valid = summarise(fold_ranks(_torch_method(model, texts, n_items, cfg.max_len), data, split.valid))
        row.update(valid, seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0)
        result.history.append(row)
        log.info("epoch %d: loss %.4f valid ndcg@10 %.4f recall@10 %.4f (%.0fs)", epoch, row["loss"],
                 valid["ndcg@10"], valid["recall@10"], row["seconds"])
        if valid["ndcg@10"] > result.best_valid.get("ndcg@10", -1.0):
            result.best_epoch, result.best_valid, bad = epoch, valid, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= cfg.patience:
                log.info("early stop: no better validation NDCG@10 for %d epochs", bad)
                break
        if epoch == stop_after:
            break
        if _out_of_time(cfg, t0, c0):
            log.warning("stopping after %.1f minutes, %.1f CPU minutes (max_minutes %g, max_cpu_minutes %g)",
                        (time.perf_counter() - t0) / 60, (time.process_time() - c0) / 60, cfg.max_minutes,
                        cfg.max_cpu_minutes)
            break
    if private is not None:
        result.privacy = private.spent()
        private.close()
        log.info("DP-SGD spent epsilon %.3f (delta %.1e) in %d steps", result.privacy["epsilon"],
                 result.privacy["delta"], result.privacy["steps"])
        model = result.model = SessionTransformer(model.cfg).to(device)   # a clean module, no opacus hooks
        if best_state is None:
            best_state = copy.deepcopy(private.module._module.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - t0
    return result


def refit(data: Interactions, text_vecs: np.ndarray, split: Split, chosen: TrainResult, *, init=None,
          progress: bool = True) -> TrainResult:
    """The chosen model's recipe trained again from scratch on every event before the test targets
    -- the validation targets too, the newest events there are -- for the epochs validation chose
    (the same schedule, stopped there). The test targets are not read; the result keeps the
    chosen run's validation figures, the only ones not trained on. ``init``: the weights the chosen
    run started from, if any. Not under DP-SGD (a second pass would spend the privacy budget again)."""
    from dataclasses import replace

    if chosen.config.dp_epsilon is not None:
        raise ValueError("no refit under DP-SGD: it would train on every shopper a second time")
    cfg = replace(chosen.config, max_minutes=0.0, max_cpu_minutes=0.0)
    again = train(data, text_vecs, Split(list(split.test.inputs), split.valid, split.test), cfg, init=init,
                  progress=progress, validate=False, stop_after=chosen.best_epoch)
    again.best_valid = dict(chosen.best_valid)
    return again


def _without_history(logits, tok, keep, y, n_items: int):
    """Each position's logits with the products at or before it (its history, which serving never
    recommends) masked out -- all but the target itself."""
    import torch

    n = tok.shape[1]
    seen = tok[:, None, :].expand(-1, n, -1)[keep]                         # (positions, n): the row's events
    before = torch.ones(n, n, dtype=torch.bool, device=tok.device).tril().expand(tok.shape[0], n, n)[keep]
    mask = before & (seen >= 0) & (seen < n_items) & (seen != y[:, None])
    cols = torch.where(mask, seen, torch.full_like(seen, n_items))         # a spare column takes the rest
    hide = torch.zeros(logits.shape[0], n_items + 1, dtype=torch.bool, device=logits.device)
    hide.scatter_(1, cols, True)
    return logits.masked_fill(hide[:, :n_items], float("-inf"))


def _out_of_time(cfg: TrainConfig, t0: float, c0: float) -> bool:
    """Whether the wall-clock (``max_minutes``) or CPU (``max_cpu_minutes``) limit is spent."""
    return ((bool(cfg.max_minutes) and time.perf_counter() - t0 > 60 * cfg.max_minutes)
            or (bool(cfg.max_cpu_minutes) and time.process_time() - c0 > 60 * cfg.max_cpu_minutes))


class _torch_method:
    """Score every product for a fold's shoppers with the model being trained."""

    def __init__(self, model, texts, n_items: int, max_len: int) -> None:
        self.model, self.texts, self.n_items, self.max_len = model, texts, n_items, max_len
        self.name = "trained"
        self._space = None

    def scores(self, inputs: list[UserSequence]) -> np.ndarray:
        import torch

        from engines.session_network import pack

        with torch.no_grad():
            if self._space is None:
                self.model.eval()
                ids = torch.arange(len(self.texts), device=self.texts.device)
                self._space = self.model.items(self.texts, ids)
            tok, kin, gap = (torch.from_numpy(a).to(self.texts.device) for a in
                             pack([s.tokens for s in inputs], [s.kinds for s in inputs], [s.times for s in inputs],
                                  self.max_len))
            vecs = torch.where((tok >= 0)[..., None], self._space[tok.clamp(min=0)], 0.0)
            users = self.model(vecs, kin, gap)
            return (users @ self._space[:self.n_items].T).float().cpu().numpy()


def config_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)
