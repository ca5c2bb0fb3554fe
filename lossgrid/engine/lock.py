"""One writer per surface file: an advisory lock file beside it.

The lock is ``FILE.lock``, held with ``flock`` for the whole run and holding
the writer's PID, host and start time as JSON. The kernel drops the lock when
its holder dies (even by SIGKILL), so a stale lock file never blocks a resume;
a second writer is refused with a message that names the holder. Readers use
:func:`lock_holder` to say that a file is being written.

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "s.h5")
    >>> with WriterLock(path):
    ...     lock_holder(path)["pid"] == os.getpid()
    True
    >>> lock_holder(path) is None
    True
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from typing import Any

from ..errors import SurfaceFileError

log = logging.getLogger(__name__)


def lock_path(path: str) -> str:
    return os.fspath(path) + ".lock"


class WriterLock:
    """An exclusive, non-blocking advisory lock on ``path`` (a file that may not exist yet)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self.lock_file = lock_path(self.path)
        self.fd: int | None = None

    def acquire(self) -> "WriterLock":
        for _ in range(10):  # retried only when another process removed the lock file under us
            try:
                fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise SurfaceFileError(f"Cannot create the lock file {self.lock_file}", e.strerror or str(e),
                                       "choose an --out in a writable directory") from None
            if not _flock_soon(fd, self.lock_file):
                os.close(fd)
                raise SurfaceFileError(f"Surface file {self.path} is being written by another run",
                                       describe_holder(read_holder(self.lock_file)),
                                       "wait for that run to finish (or stop it), then run this command again; "
                                       "it resumes from the points already done") from None
            if _same_inode(fd, self.lock_file):
                self.fd = fd
                payload = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                      "since": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode()
                try:
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, payload, 0)
                except OSError:  # a full disk: the lock holds without its note of who holds it
                    pass
                return self
            os.close(fd)  # the previous holder removed the file between our open and our lock
        raise SurfaceFileError(f"Cannot lock {self.lock_file}", "it keeps being replaced by another process",
                               "make sure only one run writes this --out")

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.remove(self.lock_file)  # while still locked: a waiting process sees a new inode and retries
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _flock_soon(fd: int, name: str, tries: int = 5) -> bool:
    """Take the exclusive lock, allowing for readers that probe it for a moment.

    On a file system without locks the run goes on unguarded, with a warning.
    """
    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                log.warning("cannot lock %s (%s): this file system offers no locks, so lossgrid cannot refuse "
                            "a second run writing the same --out", name, e.strerror or e)
                return True
            if attempt + 1 < tries:
                time.sleep(0.02)
    return False



def _same_inode(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def read_holder(lock_file: str) -> dict[str, Any]:
    try:
        with open(lock_file, encoding="utf-8") as fh:
            data = json.loads(fh.read() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def describe_holder(holder: dict[str, Any]) -> str:
    if not holder.get("pid"):
        return "another process holds its lock file"
    return (f"process {holder['pid']} on host {holder.get('host', '?')} holds its lock"
            + (f" since {holder['since']}" if holder.get("since") else ""))


def lock_holder(path: str | os.PathLike) -> dict[str, Any] | None:
    """The holder (``pid``, ``host``, ``since``) if a live writer holds ``path``'s lock, else ``None``."""
    lock_file = lock_path(os.fspath(path))
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return read_holder(lock_file) or {"pid": None}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def reader_locking(holder: dict[str, Any] | None) -> bool | str:
    """h5py's ``locking`` for a reader of a file whose lossgrid writer is ``holder`` (:func:`lock_holder`):
    HDF5's own lock without a writer; skipped while one writes (it changes only raw values after creation,
    so a reader sees a snapshot); ``best-effort`` in the writer's own process, where HDF5 wants its setting."""
    if holder is None:
        return True
    return "best-effort" if holder.get("pid") == os.getpid() else False
