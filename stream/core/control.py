"""Control messages on the events topic: ``shopstream forget`` asks the workers to erase a session."""
from __future__ import annotations

CONTROL_HEADER = "shopstream.control"
FORGET = b"forget"
