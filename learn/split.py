"""Leave-one-out: the last event of each shopper that names a product new to them is the test
target, the one before it the validation target; everything before a target (and only that) is its
input.

"New" means in no event before it: in an event stream a purchase follows the view and add-to-cart
of the same product, and the full-ranking protocol removes the shopper's history from the ranking
(as the live pipeline never recommends what was bought, carted or just viewed), so the last event
itself is usually unrankable. The first event naming a product is the discovery a recommender can
make. In de-duplicated data (Amazon Beauty, Online Retail purchases) every product event is new,
so the split is the plain last-two one."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from learn.data import Interactions, UserSequence

log = logging.getLogger(__name__)


@dataclass
class Fold:
    """Inputs and the product each shopper touched next. ``now`` is the time of the last input
    event (when the live pipeline would have recommended), NaN where the data has no clock."""

    inputs: list[UserSequence]
    targets: np.ndarray   # (U,) item index

    @property
    def now(self) -> np.ndarray:
        return np.array([s.times[-1] for s in self.inputs], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.targets)


@dataclass
class Split:
    train: list[UserSequence]   # everything before the validation target
    valid: Fold
    test: Fold
    dropped_users: int = 0


def leave_one_out(data: Interactions, *, min_items: int = 3) -> Split:
    """Shoppers with fewer than ``min_items`` distinct products are left out (and counted): the
    targets are the last two events naming a product new to the shopper, and the validation input
    needs one product before them (:meth:`UserSequence.new_item_positions`)."""
    if min_items < 3:
        raise ValueError("leave-one-out needs at least 3 distinct products per shopper")
    train, v_in, v_t, t_in, t_t = [], [], [], [], []
    dropped = 0
    for s in data.sequences:
        pos = s.new_item_positions()
        if len(pos) < min_items:
            dropped += 1
            continue
        test_at, valid_at = int(pos[-1]), int(pos[-2])
        train.append(s.head(valid_at))
        v_in.append(s.head(valid_at))
        v_t.append(int(s.tokens[valid_at]))
        t_in.append(s.head(test_at))
        t_t.append(int(s.tokens[test_at]))
    if dropped:
        log.info("leave-one-out: %d shoppers with fewer than %d distinct products left out", dropped, min_items)
    return Split(train, Fold(v_in, np.asarray(v_t, np.int64)), Fold(t_in, np.asarray(t_t, np.int64)), dropped)
