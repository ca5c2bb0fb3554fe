"""Stopping cleanly: SIGTERM and SIGHUP become an exception (as Ctrl-C already is),
so that every ``finally`` runs, files are closed and locks released, and the
command exits with a message instead of a traceback.

A signal that arrives while a module is being imported is delivered again a
moment later instead: an exception raised inside the import of a C++ extension
(torch runs Python code from its module initialisation) aborts the process
(``terminate called after throwing pybind11::error_already_set``; seen with
SIGTERM during ``import torch.distributed``).
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

#: seconds after which a signal that arrived during an import is delivered again
REDELIVER_AFTER = 0.05

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


def _in_import(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _in_import(frame):
        timer = threading.Timer(REDELIVER_AFTER, os.kill, (os.getpid(), signum))
        timer.daemon = True
        timer.start()
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def install_signal_handlers() -> None:
    """Ctrl-C raises ``KeyboardInterrupt``, SIGTERM and SIGHUP raise :class:`Terminated`
    (main thread only), never inside an import."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:  # keep nohup's (and a background shell's) choice
            signal.signal(sig, _on_signal)


def interrupted_message() -> str:
    return f"Interrupted (Ctrl-C). {RESUME_HINT}"


def terminated_message(t: Terminated) -> str:
    return f"Stopped by {t.name}. {RESUME_HINT}"
