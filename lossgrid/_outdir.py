"""Output directories that never lose an earlier run's results.

A command that writes several results into one directory (the demo, the gallery, a
training run, the tracker) keeps the rule of ``lossgrid surface``: a directory that
holds results of an earlier run is refused unless the user passes ``--overwrite``;
with it the new run works in a hidden staging directory inside the output directory,
and only once it has results of its own (:meth:`StagedDir.publish`) are the old
results moved aside, the new ones moved in and the old ones deleted. Until then the
old results stay whole; a run that fails or is interrupted before it publishes
leaves them as they were; the visible names never hold two runs at once.

Example:
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> owned = lambda name: name.endswith(".pt")
    >>> with StagedDir(d, "run", owned) as out:
    ...     _ = open(os.path.join(out.work, "a.pt"), "w").write("first")
    >>> with StagedDir(d, "run", owned, overwrite=True) as out:
    ...     _ = open(os.path.join(out.work, "b.pt"), "w").write("second")
    >>> sorted(n for n in os.listdir(d) if not n.startswith("."))
    ['b.pt']
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from types import TracebackType
from typing import Any

from ._files import fsync_dir, os_reason, output_dir
from .errors import ConfigError

log = logging.getLogger(__name__)

#: hidden directories inside an output directory: a new run's work before it publishes, and
#: the old results between being moved aside and being deleted
STAGING_PREFIX, REPLACED_PREFIX = ".lossgrid-new-", ".lossgrid-replaced-"


def earlier_results(path: str, owned: Callable[[str], bool]) -> list[str]:
    """The entries of ``path`` (a directory, or nothing yet) that are results of an earlier run."""
    try:
        return sorted(n for n in os.listdir(path) if owned(n) and not n.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        raise ConfigError(f"Cannot read the output directory {path}", os_reason(e),
                          "choose a readable directory") from None


def check_output_dir(path: str | os.PathLike, what: str, owned: Callable[[str], bool],
                     overwrite: bool = False) -> list[str]:
    """Refuse, before any work, an output ``path`` that is a file, or that holds results of an
    earlier run when not ``overwrite``; returns those results."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"The {what} output {path} is a file", f"the {what} writes several files into a directory",
                          "pass --out with a new or existing directory")
    old = earlier_results(path, owned)
    if old and not overwrite:
        shown = ", ".join(old[:3]) + (", ..." if len(old) > 3 else "")
        raise ConfigError(f"{path} already holds a {what} ({shown})",
                          f"a new {what} would replace its results or mix with them",
                          "choose a new --out directory, or pass --overwrite (the old results stay until the new "
                          "run has results of its own, and are replaced then)")
    return old


class StagedDir:
    """The output directory of a run (see the module docs).

    Args:
        path: the output directory (created if needed).
        what: what the run is, for messages (``demo``, ``gallery``, ``training run``).
        owned: whether an entry name is one of this kind of run's results.
        overwrite: replace the results of an earlier run once this one has its own.

    Attributes:
        work: where the run writes: ``path`` itself, or a hidden staging directory inside it
            while earlier results wait to be replaced (until :meth:`publish`).
    """

    def __init__(self, path: str | os.PathLike, what: str, owned: Callable[[str], bool],
                 overwrite: bool = False) -> None:
        self.path, self.what = os.fspath(path), what
        self.old = check_output_dir(self.path, what, owned, overwrite)
        output_dir(self.path, what)
        _remove_stale_staging(self.path)
        self.work = self.path
        if self.old:
            try:
                self.work = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=self.path)
            except OSError as e:
                raise ConfigError(f"Cannot write into the {what} directory {self.path}", os_reason(e),
                                  "choose a writable directory") from None
        self._staging = self.work  # where paths written before publish() point

    def final_path(self, path: str) -> str:
        """Where ``path``, written under :attr:`work` before :meth:`publish`, is once published."""
        if self._staging == self.path:
            return path
        rel = os.path.relpath(path, self._staging)
        return path if rel == os.pardir or rel.startswith(os.pardir + os.sep) else os.path.join(self.path, rel)

    def relocated(self, obj: Any) -> Any:
        """``obj`` (dicts, lists and strings within) with each path written under :attr:`work` said
        where it is once published, for results and records that name their files."""
        if isinstance(obj, str):
            return self.final_path(obj) if obj.startswith(self._staging) else obj
        if isinstance(obj, dict):
            return {k: self.relocated(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.relocated(v) for v in obj)
        return obj

    @property
    def staged(self) -> bool:
        """Whether the run still works beside earlier results it will replace."""
        return self.work != self.path

    def publish(self) -> None:
        """The run has results of its own: move the old results aside, the new ones in, and
        delete the old ones. Later writes go to :attr:`path` directly."""
        if not self.staged:
            return
        aside = tempfile.mkdtemp(prefix=f"{REPLACED_PREFIX}{os.getpid()}-", dir=self.path)
        for name in self.old:
            if os.path.lexists(os.path.join(self.path, name)):
                os.replace(os.path.join(self.path, name), os.path.join(aside, name))
        for name in os.listdir(self.work):
            os.replace(os.path.join(self.work, name), os.path.join(self.path, name))
        fsync_dir(os.path.join(self.path, "."))
        os.rmdir(self.work)
        shutil.rmtree(aside, ignore_errors=True)
        log.info("replaced the results of an earlier %s in %s (%d entries)", self.what, self.path, len(self.old))
        self.work, self.old = self.path, []

    def discard(self) -> None:
        """The run ends without results: its staged files go, earlier results stay as they were."""
        if self.staged:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = self.path

    def __enter__(self) -> StagedDir:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if kind is None:
            self.publish()
        else:
            self.discard()


def _remove_stale_staging(path: str) -> None:
    """Remove the staging directories of runs that died before they published (their process is
    gone); directories of replaced results left by a run killed while publishing are kept, and named."""
    for name in os.listdir(path):
        for prefix in (STAGING_PREFIX, REPLACED_PREFIX):
            pid = name[len(prefix):].split("-", 1)[0] if name.startswith(prefix) else ""
            if pid.isascii() and pid.isdigit() and not _alive(int(pid)):
                if prefix == STAGING_PREFIX:
                    shutil.rmtree(os.path.join(path, name), ignore_errors=True)
                else:
                    log.warning("%s holds %s: results an interrupted run was replacing; they are kept there",
                                path, name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True
