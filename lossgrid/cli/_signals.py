"""Stopping cleanly: SIGTERM and SIGHUP become an exception (as Ctrl-C already is),
so that every ``finally`` runs, files are closed and locks released, and the
command exits with a message instead of a traceback."""

from __future__ import annotations

import signal
from types import FrameType

#: exit codes: Ctrl-C as shells report it; a terminated run is an error like any other
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 1
RESUME_HINT = "Finished chunks of a surface are saved: run the same command again to resume."


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM or SIGHUP.

    A ``BaseException`` (like ``KeyboardInterrupt``), so that ``except Exception``
    around user code or optional backends never swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


def install_signal_handlers() -> None:
    """Turn SIGTERM and SIGHUP into :class:`Terminated` (main thread only)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:  # keep nohup's choice
            signal.signal(sig, _raise_terminated)


def interrupted_message() -> str:
    return f"Interrupted (Ctrl-C). {RESUME_HINT}"


def terminated_message(t: Terminated) -> str:
    return f"Stopped by {t.name}. {RESUME_HINT}"
