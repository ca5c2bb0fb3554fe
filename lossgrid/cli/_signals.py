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
#: what an interrupted command leaves, by command (every output is written whole or not at all)
STOP_HINTS = {
    "surface": RESUME_HINT,
    "evolve": "Finished points of the evolution file are saved: run the same command again to resume.",
    "train": "A run in --out that this one was to replace stays as it was unless this run had finished its first "
             "epoch; otherwise the checkpoints written so far are kept.",
    "demo": "A demo in --out that this one was to replace stays as it was.",
    "gallery": "A gallery in --out that this one was to replace stays as it was.",
}
DEFAULT_STOP_HINT = "Nothing was written: lossgrid writes its outputs whole, at the end, or not at all."


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


def exit_on_signal(code: int) -> None:
    """Once a command has finished: Ctrl-C, SIGTERM and SIGHUP end the process at once with the finished
    command's exit ``code``, no traceback (one arriving while the interpreter shuts down, say, in an
    ``atexit`` hook or while torch's threads stop, would otherwise print ``KeyboardInterrupt``)."""
    def finish(signum: int, frame: FrameType | None) -> None:
        os._exit(code)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, finish)


def stop_hint(args: list[str]) -> str:
    """What a command stopped by a signal leaves behind: the first word of ``args`` naming a command."""
    command = next((a for a in args if not a.startswith("-")), "")
    return STOP_HINTS.get(command, DEFAULT_STOP_HINT)


def interrupted_message(args: list[str]) -> str:
    return f"Interrupted (Ctrl-C). {stop_hint(args)}"


def terminated_message(t: Terminated, args: list[str]) -> str:
    return f"Stopped by {t.name}. {stop_hint(args)}"
