"""Replay and backfill: re-run a slice of the events topic through the same pipeline core into another topic."""
from stream.replay.run import (
    Bound,
    Checkpoint,
    Replay,
    ReplaySummary,
    parse_bound,
    run_replay,
)

__all__ = ["Bound", "Checkpoint", "Replay", "ReplaySummary", "parse_bound", "run_replay"]
