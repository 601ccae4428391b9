"""Child processes that never outlive the shopstream process that started them."""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def die_with_parent() -> None:
    """``preexec_fn`` for ``subprocess.Popen``: the child gets SIGTERM when its parent exits.

    The embedded broker and demo workers run in their own process groups (so a terminal's Ctrl-C
    reaches only the parent, which stops them in order); this covers a parent that is killed
    outright. Linux only; elsewhere it does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def terminate_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so ``finally`` blocks stop the children."""
    def handler(signum, frame):  # noqa: ANN001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def cpu_seconds(pid: int | None = None) -> float | None:
    """User plus system CPU seconds a process has used so far, all its threads together: this
    process when ``pid`` is None, another one from ``/proc/<pid>/stat`` (None where there is no
    ``/proc`` or the process is gone, and the figure is then left out)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    try:
        # the fields after the command name, which is in brackets and may itself hold spaces
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by named groups of processes between :meth:`start` and :meth:`stop`.

    ``roles`` maps a name to its pids (None is this process): ``{"workers": [p1, p2],
    "broker": [p3], "driver": [None]}``. A role whose CPU cannot be read is left out."""

    def __init__(self, roles: dict[str, list[int | None]]) -> None:
        self.roles = roles
        self._start: dict[str, float] = {}
        self._t0 = 0.0

    def _read(self) -> dict[str, float]:
        out = {}
        for role, pids in self.roles.items():
            values = [cpu_seconds(pid) for pid in pids]
            if values and all(v is not None for v in values):
                out[role] = sum(values)   # type: ignore[arg-type]
        return out

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._start = self._read()

    def stop(self, events: int) -> dict:
        """``{"cpu_us_per_event": {role: us, ..., "total": us}, "cores": {role: cores, ...},
        "seconds": wall}`` over the window, or {} where nothing could be read."""
        wall = time.monotonic() - self._t0
        now = self._read()
        used = {role: now[role] - self._start[role] for role in now if role in self._start}
        if not used or events <= 0 or wall <= 0:
            return {}
        used["total"] = sum(used.values())
        return {"cpu_us_per_event": {r: round(s / events * 1e6, 1) for r, s in used.items()},
                "cores": {r: round(s / wall, 2) for r, s in used.items()}, "seconds": round(wall, 3)}
