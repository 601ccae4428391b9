"""The worker's frozen start-up heap: skipped by the collector, handed back to it after a swap."""
from __future__ import annotations

import gc
import weakref

import pytest

from stream.live import heap


class Node:
    def __init__(self) -> None:
        self.me = self            # a reference cycle: only the cyclic collector frees it


@pytest.fixture
def frozen_heap():
    gc.collect()
    yield
    gc.unfreeze()
    gc.collect()


def test_cyclic_garbage_of_a_frozen_heap_is_freed_by_a_refreeze(frozen_heap):
    node = Node()
    gone = weakref.ref(node)
    assert heap.freeze() > 0
    del node                      # garbage now, but frozen: a collection does not look at it
    gc.collect()
    assert gone() is not None
    heap.refreeze("a test swap")
    assert gone() is None
    assert gc.get_freeze_count() > 0          # and what is still alive is frozen again


def test_a_process_that_never_froze_pays_nothing_on_a_swap(frozen_heap):
    node = Node()
    gone = weakref.ref(node)
    gc.disable()
    try:
        del node
        heap.refreeze("a swap in a test or a replay")    # no freeze: no collection either
        assert gone() is not None and gc.get_freeze_count() == 0
    finally:
        gc.enable()
    gc.collect()
    assert gone() is None
