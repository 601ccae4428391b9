"""The worker's start-up heap, kept out of Python's cyclic garbage collector (issue 13).

A loaded worker holds ~240,000 objects the collector tracks -- torch, transformers, Faust, the
catalogue and the index -- nearly all of which live as long as the process. Every full collection
walked all of them: 17 in a 40,000-event all-distinct run of ``bench e2e``, ~108 ms each (1.8 s of
the event loop's time, and a 108 ms stall of every event in flight each time). :func:`freeze`, once
start-up is done, moves them to the collector's permanent generation (``gc.freeze``, as pre-fork
servers do); reference counting still frees any of them the moment nothing refers to it, and
full collections then take ~9 ms.

What the collector skips it cannot free when it is garbage *in a cycle*. A swap of models or of
the index drops a whole generation of such objects, so :func:`refreeze` (called after each swap)
hands them back to the collector, collects once, and freezes what is left. It does nothing in a
process that never froze (tests, replay).
"""
from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)


def freeze() -> int:
    """Collect what start-up left behind, then freeze the rest; how many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def refreeze(reason: str) -> None:
    """After ``reason`` (a swap) dropped long-lived objects: collect among them, freeze again."""
    if not gc.get_freeze_count():
        return
    t0 = time.perf_counter()
    gc.unfreeze()
    freed = gc.collect()
    gc.freeze()
    log.info("after %s: %d unreachable object(s) collected, %d frozen, in %.0f ms", reason, freed,
             gc.get_freeze_count(), (time.perf_counter() - t0) * 1000)
