"""Interaction data for training and offline evaluation, in one generic format.

* items: ``id<TAB>text`` per line (the product's title or description);
* sequences: ``user<TAB>space-separated item ids, oldest first``.

A first line that names columns (``asin<TAB>title``, ``user_id<TAB>items``, ...) is skipped; lines
starting with ``#`` are comments. Sequence ids missing from the items file are dropped and counted.
Converters turn Amazon Beauty (already nearly this format) and UCI Online Retail (customers'
purchase histories in time order) into it, and :func:`read_event_log` reads JSONL event logs in the
schema of the events topic (views, clicks, searches, carts and purchases with their times).
"""
from __future__ import annotations

import csv
import gzip
import io
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from engines.errors import EngineError
from engines.session import KIND_CODES

log = logging.getLogger(__name__)

HEADER_NAMES = {"id", "item", "item_id", "items", "asin", "product", "product_id", "user", "user_id",
                "reviewer_id", "session", "session_id", "customer", "customer_id"}
#: Code of each event type in :attr:`Sequence_.kinds`; 0 is padding.
SEARCH = KIND_CODES["search"]


class DataError(EngineError, ValueError):
    """An items, sequences or event file that cannot be read."""


@dataclass
class UserSequence:
    """One shopper's events, oldest first.

    ``tokens`` index :attr:`Interactions.texts` (items first, then queries); ``kinds`` are
    :data:`KIND_CODES`; ``times`` are epoch seconds or NaN when the data has no clock.
    """

    user: str
    tokens: np.ndarray     # (L,) int64
    kinds: np.ndarray      # (L,) int64
    times: np.ndarray      # (L,) float64

    def __len__(self) -> int:
        return len(self.tokens)

    def item_positions(self) -> np.ndarray:
        """Positions of product events (everything but searches)."""
        return np.flatnonzero(self.kinds != SEARCH)

    def new_item_positions(self) -> np.ndarray:
        """Positions of product events naming a product new to the shopper (in no event before it):
        the possible targets. A product viewed, carted and then bought counts once, at its first
        event; the live pipeline never recommends what a shopper bought, carted or just viewed, and
        the offline protocol removes the whole input history from the ranking, so a repeat could
        never be ranked. In de-duplicated data (Amazon Beauty, Online Retail purchases) every
        product event is new and this is :meth:`item_positions`."""
        pos = self.item_positions()
        if not len(pos):
            return pos
        _, first = np.unique(self.tokens[pos], return_index=True)
        return pos[np.sort(first)]

    def head(self, n: int) -> "UserSequence":
        return UserSequence(self.user, self.tokens[:n], self.kinds[:n], self.times[:n])


@dataclass
class Interactions:
    """A catalogue (``item_ids``) plus queries, their texts, and the shoppers' sequences."""

    item_ids: list[str]
    texts: list[str]                       # item texts, then query texts
    sequences: list[UserSequence]
    name: str = "dataset"
    stats: dict = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def kinds_seen(self) -> list[str]:
        """Event types present, most frequent first."""
        names = {code: kind for kind, code in KIND_CODES.items()}
        counts: dict[int, int] = {}
        for s in self.sequences:
            for k, c in zip(*np.unique(s.kinds, return_counts=True)):
                counts[int(k)] = counts.get(int(k), 0) + int(c)
        return [names[k] for k, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]

    def has_clock(self) -> bool:
        return any(np.isfinite(s.times).any() for s in self.sequences)

    def summary(self) -> dict:
        lengths = np.array([len(s) for s in self.sequences]) if self.sequences else np.zeros(1)
        return {"name": self.name, "items": self.n_items, "queries": len(self.texts) - self.n_items,
                "users": len(self.sequences), "events": int(lengths.sum()),
                "mean_length": round(float(lengths.mean()), 2), **self.stats}


def _lines(path: str | Path) -> Iterator[list[str]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh):
            line = line.rstrip("\r\n")
            if not line or line.startswith("#"):
                continue
            cols = line.split("\t")
            if n == 0 and cols[0].strip().lower() in HEADER_NAMES:
                continue
            yield cols


def read_items(path: str | Path) -> tuple[list[str], list[str]]:
    """``(ids, texts)`` from an items file; a duplicate id keeps its first text."""
    ids, texts, seen = [], [], set()
    for cols in _lines(path):
        pid = cols[0].strip()
        if not pid or pid in seen:
            continue
        seen.add(pid)
        ids.append(pid)
        texts.append(" ".join(cols[1:]).strip())
    if not ids:
        raise DataError(f"{path}: no items")
    return ids, texts


def read_sequences(path: str | Path, item_ids: Sequence[str], *, kind: str = "purchase",
                   name: str = "dataset", texts: Sequence[str] | None = None) -> Interactions:
    """Sequences in the generic format; every event gets ``kind`` and no time."""
    if kind not in KIND_CODES or kind == "search":
        raise DataError(f"kind must be one of the product event types, not {kind!r}")
    pos = {pid: i for i, pid in enumerate(item_ids)}
    seqs, dropped = [], 0
    for cols in _lines(path):
        if len(cols) < 2:
            continue
        ids = cols[1].split()
        idx = [pos[t] for t in ids if t in pos]
        dropped += len(ids) - len(idx)
        if idx:
            n = len(idx)
            seqs.append(UserSequence(cols[0], np.asarray(idx, np.int64), np.full(n, KIND_CODES[kind], np.int64),
                                     np.full(n, np.nan)))
    if dropped:
        log.warning("%s: dropped %d events of items not in the items file", path, dropped)
    return Interactions(list(item_ids), list(texts) if texts is not None else [], seqs, name=name,
                        stats={"dropped_unknown": dropped})


def load_generic(items: str | Path, sequences: str | Path, *, kind: str = "purchase") -> Interactions:
    ids, texts = read_items(items)
    return read_sequences(sequences, ids, kind=kind, texts=texts, name=Path(sequences).parent.name or "dataset")


def write_generic(data: Interactions, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``items.tsv`` and ``sequences.tsv`` (product events only) to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items, seqs = out_dir / "items.tsv", out_dir / "sequences.tsv"
    clean = lambda s: re.sub(r"[\t\r\n]+", " ", s).strip()  # noqa: E731
    with open(items, "w", encoding="utf-8") as fh:
        for pid, text in zip(data.item_ids, data.texts):
            fh.write(f"{pid}\t{clean(text)}\n")
    with open(seqs, "w", encoding="utf-8") as fh:
        for s in data.sequences:
            ids = [data.item_ids[t] for t, k in zip(s.tokens, s.kinds) if k != SEARCH]
            if ids:
                fh.write(f"{s.user}\t{' '.join(ids)}\n")
    return items, seqs


# -- converters ----------------------------------------------------------------------------------
def load_amazon_beauty(folder: str | Path) -> Interactions:
    """Amazon Beauty 5-core (``items.tsv`` and ``sequences.tsv``); a review stands for a purchase."""
    folder = Path(folder)
    data = load_generic(folder / "items.tsv", folder / "sequences.tsv", kind="purchase")
    data.name = "amazon-beauty"
    return data


_PRODUCT_CODE = re.compile(r"^\d{5}[A-Za-z]{0,2}$")


def load_online_retail(csv_gz: str | Path, *, min_items: int = 3) -> Interactions:
    """UCI Online Retail as customers' purchase histories in time order.

    Merchandise lines only (5-digit stock codes, positive quantity and price, no cancellations,
    described). Each customer's first purchase of each product is kept (a repeat order is not a
    new discovery, and the live pipeline never recommends what a shopper bought), lines of one
    invoice in invoice order. Customers with fewer than ``min_items`` products are left out, so
    leave-one-out keeps at least one product of input. Times are the invoice times.
    """
    path = Path(csv_gz)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    titles: dict[str, dict[str, int]] = {}
    events: dict[str, list[tuple[float, int, str]]] = {}
    with io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8") as fh:
        for line_no, row in enumerate(csv.DictReader(fh)):
            code = (row.get("StockCode") or "").strip().upper()
            desc = (row.get("Description") or "").strip()
            cust = (row.get("CustomerID") or "").split(".")[0]
            try:
                qty, price = int(row["Quantity"]), float(row["UnitPrice"])
                when = datetime.strptime(row["InvoiceDate"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
            except (ValueError, KeyError, TypeError):
                continue
            if (not _PRODUCT_CODE.match(code) or row["InvoiceNo"].startswith("C") or qty <= 0 or price <= 0
                    or not desc or desc.upper() != desc):
                continue
            counts = titles.setdefault(code, {})
            counts[desc] = counts.get(desc, 0) + 1
            if cust:
                events.setdefault(cust, []).append((when.timestamp(), line_no, code))
    item_ids = sorted(titles)
    texts = [max(titles[c].items(), key=lambda kv: (kv[1], kv[0]))[0].title() for c in item_ids]
    pos = {c: i for i, c in enumerate(item_ids)}
    seqs = []
    for cust in sorted(events):
        seen, idx, times = set(), [], []
        for ts, _, code in sorted(events[cust]):
            if code not in seen:
                seen.add(code)
                idx.append(pos[code])
                times.append(ts)
        if len(idx) >= min_items:
            seqs.append(UserSequence(cust, np.asarray(idx, np.int64),
                                     np.full(len(idx), KIND_CODES["purchase"], np.int64), np.asarray(times)))
    return Interactions(item_ids, texts, seqs, name="online-retail", stats={"min_items": min_items})


def _epoch(ts) -> float:
    if isinstance(ts, (int, float)):
        return float(ts) / 1000.0
    dt = datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def events_to_interactions(events: Iterable[Mapping], item_ids: Sequence[str], item_texts: Sequence[str], *,
                           name: str = "events") -> Interactions:
    """Fold events (dicts in the events-topic schema) into per-user sequences in event-time order.

    Product events of unknown products and malformed events are skipped and counted; searches
    become query tokens (their text is embedded like a product title).
    """
    pos = {pid: i for i, pid in enumerate(item_ids)}
    texts = list(item_texts)
    query_pos: dict[str, int] = {}
    rows: dict[str, list[tuple[float, int, int, int]]] = {}
    skipped = 0
    for n, e in enumerate(events):
        try:
            kind = KIND_CODES[e["type"]]
            ts = _epoch(e["ts"])
            user = str(e["user_id"])
            if kind == SEARCH:
                q = str(e["query"]).strip()
                if not q:
                    raise KeyError("query")
                tok = query_pos.get(q)
                if tok is None:
                    tok = query_pos[q] = len(texts)
                    texts.append(q)
            else:
                tok = pos[e["item_id"]]
        except (KeyError, TypeError, ValueError):
            skipped += 1
            continue
        rows.setdefault(user, []).append((ts, n, tok, kind))
    seqs = []
    for user in sorted(rows):
        r = sorted(rows[user])
        seqs.append(UserSequence(user, np.array([x[2] for x in r], np.int64), np.array([x[3] for x in r], np.int64),
                                 np.array([x[0] for x in r], np.float64)))
    if skipped:
        log.warning("%s: skipped %d events (unknown product, bad type, time or query)", name, skipped)
    return Interactions(list(item_ids), texts, seqs, name=name, stats={"skipped_events": skipped})


def read_event_log(path: str | Path, items: str | Path) -> Interactions:
    """A JSONL event log (one event per line, the events-topic schema) with an items file."""
    import orjson

    ids, texts = read_items(items)

    def events() -> Iterator[Mapping]:
        opener = gzip.open if Path(path).suffix == ".gz" else open
        with opener(path, "rb") as fh:
            for line in fh:
                line = line.strip()
                if line:
                    try:
                        yield orjson.loads(line)
                    except orjson.JSONDecodeError:
                        yield {}
    if not Path(path).is_file():
        raise DataError(f"{path}: no such file")
    return events_to_interactions(events(), ids, texts, name=Path(path).stem)


def most_popular_slice(data: Interactions, n_items: int, *, min_length: int = 3,
                       max_users: int | None = None) -> Interactions:
    """A small, dense slice: the ``n_items`` most frequent products and the shoppers who have at
    least ``min_length`` events on them (other events dropped). For quick runs and tests."""
    counts = np.zeros(data.n_items, dtype=np.int64)
    for s in data.sequences:
        np.add.at(counts, s.tokens[(s.kinds != SEARCH) & (s.tokens < data.n_items)], 1)
    keep = np.sort(np.argsort(-counts, kind="stable")[:n_items])
    new = np.full(len(data.texts), -1, dtype=np.int64)
    new[keep] = np.arange(len(keep))
    seqs = []
    for s in data.sequences:
        m = (s.kinds != SEARCH) & (s.tokens < data.n_items)
        m &= new[np.where(m, s.tokens, 0)] >= 0
        if m.sum() >= min_length:
            seqs.append(UserSequence(s.user, new[s.tokens[m]], s.kinds[m], s.times[m]))
            if max_users and len(seqs) >= max_users:
                break
    return Interactions([data.item_ids[i] for i in keep], [data.texts[i] for i in keep], seqs,
                        name=f"{data.name}-top{n_items}", stats={"slice_of": data.name})
