"""Real shopper behaviour as a stream of events: Online Retail invoices and WANDS searches.

Each invoice becomes the customer's visit: product views, add-to-carts, then one purchase per
carted product, in the order the invoice lines were written, invoices in time order. Some visits
start with a real WANDS search query. Times are re-based onto "now" and sped up by the caller.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

from stream.tools.datasets import (
    is_product_line,
    iter_retail,
    retail_path,
    wands_queries,
)


@dataclass(frozen=True)
class ScriptedEvent:
    """An event before it is given its event time, plus what it stands for (for display)."""

    user_id: str
    session_id: str
    type: str
    original_time: datetime
    item_id: str | None = None
    query: str | None = None


def shopper_events(path: str | Path | None = None, *, seed: int = 7, search_share: float = 0.25,
                   max_lines_per_visit: int = 8, known: set[str] | None = None) -> Iterator[ScriptedEvent]:
    rng = random.Random(seed)
    queries = wands_queries()
    lines = (ln for ln in iter_retail(path or retail_path()) if ln.customer and is_product_line(ln))
    for invoice, group in itertools.groupby(lines, key=lambda ln: ln.invoice):
        group = [ln for ln in group if known is None or ln.stock_code.upper() in known][:max_lines_per_visit]
        if not group:
            continue
        user, when = group[0].customer, group[0].when
        session = f"s-{invoice}"
        if rng.random() < search_share:
            yield ScriptedEvent(user, session, "search", when, query=rng.choice(queries))
        carted = []
        for ln in group:
            pid = ln.stock_code.upper()
            yield ScriptedEvent(user, session, "view", when, item_id=pid)
            if rng.random() < 0.3:
                yield ScriptedEvent(user, session, "click", when, item_id=pid)
            yield ScriptedEvent(user, session, "add_to_cart", when, item_id=pid)
            carted.append(pid)
        for pid in carted:
            yield ScriptedEvent(user, session, "purchase", when, item_id=pid)
