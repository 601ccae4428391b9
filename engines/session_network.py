"""The learned session encoder: a small causal transformer over a shopper's event sequence.

Each event is a text-derived vector (a product's title vector, or a search query's vector), an
event type and the time since the previous event. The output at the newest position is the
shopper's embedding, a unit vector in the same space as the product index.

Products keep text-derived vectors: ``ItemTower`` maps a title's MiniLM vector to its index vector,
``normalize(t + MLP(t))`` (the MLP starts at zero, so training starts from the plain text space).
A product added after training gets its vector from its title alone; nothing is learned per id.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

#: Time-gap codes: 0 padding, 1 unknown (no clock), 2 first event, 3.. log2 buckets of seconds.
GAP_PAD, GAP_UNKNOWN, GAP_FIRST, GAP_BASE = 0, 1, 2, 3
N_GAPS = 32
N_KINDS = 6      # padding + the five event types of engines.session.EVENT_TYPES
#: Attention bias of a masked key: exp() of it is exactly 0 in fp32, and it stays finite in fp16
#: (-1e9 becomes -inf there, and a row with every key masked, a padding row, would turn to NaN).
MASKED = -1e4


def gap_codes(times: np.ndarray) -> np.ndarray:
    """Code of the time since the previous event, per event (oldest first); NaN times -> unknown."""
    times = np.asarray(times, dtype=np.float64)
    out = np.full(len(times), GAP_UNKNOWN, dtype=np.int64)
    if len(times) == 0:
        return out
    gaps = np.diff(times)
    known = np.isfinite(gaps)
    buckets = GAP_BASE + np.minimum(N_GAPS - 1 - GAP_BASE, np.floor(np.log2(1.0 + np.maximum(gaps, 0.0), where=known,
                                                                              out=np.zeros_like(gaps))))
    out[1:] = np.where(known, buckets, GAP_UNKNOWN).astype(np.int64)
    out[0] = GAP_FIRST if np.isfinite(times[0]) else GAP_UNKNOWN
    return out


def gap_code_rows(times: np.ndarray, first: np.ndarray, start: np.ndarray) -> np.ndarray:
    """:func:`gap_codes` of many right-aligned sessions at once (a worker batch, without a numpy
    call per session: ~8% of the batch thread with every event a new shopper, issue 13).

    ``times`` is ``(rows, n + 1)``, each row's times in columns ``first[r]`` to ``n`` (NaN before);
    returns the ``(rows, n)`` codes of columns 1 to ``n``, padding before column ``start[r]``. A
    row's oldest time has no gap before it: its code is "first" (or "unknown" without a clock)."""
    rows, width = times.shape[0], times.shape[1] - 1
    gaps = np.diff(times, axis=1)
    known = np.isfinite(gaps)
    buckets = GAP_BASE + np.minimum(N_GAPS - 1 - GAP_BASE, np.floor(np.log2(1.0 + np.maximum(gaps, 0.0), where=known,
                                                                              out=np.zeros_like(gaps))))
    out = np.where(known, buckets, GAP_UNKNOWN).astype(np.int64)
    col = first - 1                                   # where a row's oldest time has its own code
    own = np.flatnonzero(col >= start)
    out[own, col[own]] = np.where(np.isfinite(times[own, first[own]]), GAP_FIRST, GAP_UNKNOWN)
    out[np.arange(width)[None, :] < start[:, None]] = GAP_PAD
    return out


@dataclass(frozen=True)
class ModelConfig:
    text_dim: int = 384
    d_model: int = 128
    layers: int = 2
    heads: int = 2
    ffn: int = 256
    max_len: int = 50
    dropout: float = 0.2
    item_tower: bool = True
    item_hidden: int = 512
    item_ids: int = 0          # products with a learned id vector next to their title's (0: none)

    def to_dict(self) -> dict:
        return asdict(self)


class ItemTower(nn.Module):
    """Text vector -> index vector: ``normalize(t + MLP(t))``, the identity at initialisation."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def raw(self, t: torch.Tensor) -> torch.Tensor:
        return t + self.fc2(self.drop(F.gelu(self.fc1(t))))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.raw(t), dim=-1)


class Block(nn.Module):
    """Pre-norm causal self-attention and feed-forward, written out so ONNX export is plain ops."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        if d % heads:
            raise ValueError(f"d_model {d} is not divisible by heads {heads}")
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.ln1(x)).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d // h)) + bias
        att = self.drop(torch.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(b, n, d)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.ff(self.ln2(x)))

    def newest(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` at the newest position only, ``(B, 1, d)``: keys and values for every
        event, but the query, projection and feed-forward for one (serving needs no more)."""
        b, n, d = x.shape
        h = self.heads
        y = self.ln1(x)
        w, bw = self.qkv.weight, self.qkv.bias
        q = F.linear(y[:, -1:], w[:d], bw[:d]).reshape(b, 1, h, d // h).transpose(1, 2)
        k, v = F.linear(y, w[d:], bw[d:]).reshape(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d // h)) + bias[:, :, -1:, :]
        att = self.drop(torch.softmax(att, dim=-1))
        x = x[:, -1:] + self.drop(self.proj((att @ v).transpose(1, 2).reshape(b, 1, d)))
        return x + self.drop(self.ff(self.ln2(x)))


class SessionTransformer(nn.Module):
    """User tower: (vectors, kinds, gaps) of left-padded sequences -> a unit vector per position."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_tower = ItemTower(cfg.text_dim, cfg.item_hidden, cfg.dropout) if cfg.item_tower else None
        self.inp = nn.Linear(cfg.text_dim, cfg.d_model)
        self.kind = nn.Embedding(N_KINDS, cfg.d_model)
        self.gap = nn.Embedding(N_GAPS, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_len, cfg.d_model)
        self.ln_in = nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg.d_model, cfg.heads, cfg.ffn, cfg.dropout) for _ in range(cfg.layers))
        self.ln_out = nn.LayerNorm(cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.text_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(20.0)))
        # an id vector per product seen in training, added to the title's (zero at the start, so
        # training starts from the text space); a product without one is its title alone
        self.id_emb = nn.Embedding(cfg.item_ids, cfg.text_dim) if cfg.item_ids else None
        if self.id_emb is not None:
            nn.init.zeros_(self.id_emb.weight)

    def items(self, text_vectors: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Index vectors of products (or queries) from their text vectors, plus their id vectors
        where ``ids`` (training item indices, -1 for none) name products seen in training."""
        raw = self.item_tower.raw(text_vectors) if self.item_tower is not None else text_vectors
        if self.id_emb is not None and ids is not None:
            known = (ids >= 0) & (ids < self.cfg.item_ids)
            raw = raw + torch.where(known[:, None], self.id_emb(ids.clamp(0, self.cfg.item_ids - 1)), 0.0)
        return F.normalize(raw, dim=-1)

    def _inputs(self, vectors: torch.Tensor, kinds: torch.Tensor, gaps: torch.Tensor):
        """Event embeddings ``(B, L, d)`` and the causal, padding-masked attention bias."""
        n = vectors.shape[1]
        pad = kinds == 0
        # reverse positions: the newest event is position 0 whatever the length
        pos = torch.arange(n - 1, -1, -1, device=vectors.device).clamp(max=self.cfg.max_len - 1)
        # in training every shopper gets their own row of positions: per-sample gradients (DP-SGD,
        # learn.privacy) need a batch dimension on each layer's input; the served graph is unchanged
        pos = pos.expand(vectors.shape[0], n) if self.training else pos[None]
        x = self.inp(vectors) + self.kind(kinds) + self.gap(gaps) + self.pos(pos)
        x = self.drop(self.ln_in(x))
        causal = torch.ones(n, n, dtype=torch.bool, device=vectors.device).tril()
        allowed = causal[None, :, :] & ~pad[:, None, :]
        bias = torch.where(allowed, 0.0, MASKED).to(x.dtype)[:, None, :, :]
        return x, bias

    def encode(self, vectors: torch.Tensor, kinds: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
        """``(B, L, text_dim)`` index-space vectors, right-aligned; kind 0 marks padding."""
        x, bias = self._inputs(vectors, kinds, gaps)
        for block in self.blocks:
            x = block(x, bias)
        # skip from each event's own vector: at initialisation (``out`` is zero) the embedding is the
        # newest event's vector, i.e. last-item nearest neighbours; training learns the correction
        return F.normalize(vectors + self.out(self.ln_out(x)), dim=-1)

    def forward(self, vectors: torch.Tensor, kinds: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
        """The shopper's embedding: the output at the newest (last) position, ``(B, text_dim)``.

        Equal to ``encode(...)[:, -1]``, computed with the last layer at the newest position only
        (about 40% fewer operations for the exported and served graph)."""
        x, bias = self._inputs(vectors, kinds, gaps)
        for block in self.blocks[:-1]:
            x = block(x, bias)
        x = self.blocks[-1].newest(x, bias)[:, 0]
        return F.normalize(vectors[:, -1] + self.out(self.ln_out(x)), dim=-1)


def pack(tokens: list[np.ndarray], kinds: list[np.ndarray], times: list[np.ndarray],
         max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-align sequences into ``(B, L)`` arrays: token ids (-1 padding), kind and gap codes.

    ``L`` is the longest sequence, capped at ``max_len`` (older events are dropped); gap codes are
    computed before truncation so the oldest kept event still knows its gap.
    """
    if not tokens:
        raise ValueError("pack needs at least one sequence")
    n = max(1, min(max_len, max(len(t) for t in tokens)))
    tok = np.full((len(tokens), n), -1, dtype=np.int64)
    kin = np.zeros((len(tokens), n), dtype=np.int64)
    gap = np.zeros((len(tokens), n), dtype=np.int64)
    for i, (t, k, ts) in enumerate(zip(tokens, kinds, times)):
        m = min(len(t), n)
        if m == 0:
            continue
        tok[i, n - m:] = t[-m:]
        kin[i, n - m:] = k[-m:]
        gap[i, n - m:] = gap_codes(ts)[-m:]
    return tok, kin, gap
