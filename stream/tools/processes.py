"""Child processes that never outlive the shopstream process that started them."""
from __future__ import annotations

import signal
import sys


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
