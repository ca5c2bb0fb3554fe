"""Users' files: atomic outputs, input/output collisions, clear reasons for
unusable paths.

Every file lossgrid writes goes through :func:`atomic_output`: it is written
beside its target under a temporary name, synced, and moved into place with
``os.replace``, so an interruption leaves either the old file or the new one,
never half of one. :func:`refuse_input_as_output` keeps a command from writing
over one of its own inputs, however the two paths are spelled.

Example:
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> with atomic_output(os.path.join(d, "a.txt")) as tmp:
    ...     _ = open(tmp, "w").write("hello")
    >>> open(os.path.join(d, "a.txt")).read()
    'hello'
"""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, BinaryIO

from .errors import ConfigError, LossgridError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def temp_sibling(path: str, tag: str = "tmp", unique: bool = True) -> str:
    """A hidden name beside ``path`` that keeps its extension (writers pick formats by it).

    ``unique=False`` gives a fixed name, for writers that hold a lock on ``path``
    and remove what an earlier, killed run left there.
    """
    head, tail = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(tail)
    suffix = f"-{os.getpid()}-{uuid.uuid4().hex[:8]}" if unique else ""
    return os.path.join(head, f".{stem}.{tag}{suffix}{ext}")


def fsync_path(path: str) -> None:
    """Flush a file's data to disk (best effort on file systems that refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Make a rename in the directory of ``path`` durable (best effort)."""
    fsync_path(os.path.dirname(os.path.abspath(path)) or ".")


def replace(src: str, dst: str) -> None:
    """Sync ``src`` and move it onto ``dst`` atomically."""
    fsync_path(src)
    os.replace(src, dst)
    fsync_dir(dst)


def remove_quietly(path: str | None) -> None:
    if path:
        with contextlib.suppress(OSError):
            os.remove(path)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, what: str = "output") -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success move it onto ``path``.

    On any exception (Ctrl-C included) the temporary file is removed and an
    existing ``path`` is left untouched. ``OSError`` becomes a
    :class:`LossgridError` naming the file.
    """
    target = os.fspath(path)
    check_output_path(target, what)
    tmp = temp_sibling(target)
    try:
        yield tmp
        if not os.path.exists(tmp):
            raise LossgridError(f"Writing {what} {target} produced no file", hint="report this as a bug")
        replace(tmp, target)
    except OSError as e:
        raise LossgridError(f"Cannot write {what} {target}", os_reason(e),
                            "free some space or choose another path") from None
    finally:
        remove_quietly(tmp)


def write_new_file(path: str, data: bytes) -> None:
    """Write ``data`` to a path that is ours alone (a temporary sibling) and sync it;
    on failure nothing is left behind and ``OSError`` propagates. The sync here is
    checked (a file system that allocates late reports a full disk only now);
    :func:`replace`'s own sync of the same file is then nearly free."""
    try:
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        remove_quietly(path)
        raise


def publish_bytes(path: str, data: bytes, exclusive: bool = False) -> bool:
    """Write ``data`` beside ``path`` and move it into place atomically.

    With ``exclusive`` an existing ``path`` is kept (the move is a hard link,
    which never replaces a file) and ``False`` is returned. ``OSError`` propagates.
    """
    tmp = temp_sibling(path)
    try:
        write_new_file(tmp, data)
        if exclusive:
            try:
                os.link(tmp, path)
                fsync_dir(path)
                return True
            except FileExistsError:
                return False
            except OSError:  # file systems without hard links
                if os.path.exists(path):
                    return False
        replace(tmp, path)
        return True
    finally:
        remove_quietly(tmp)


def hdf5_image(fill: Callable[[Any], None]) -> bytes:
    """The bytes of an HDF5 file built in memory by ``fill(h5py_file)``.

    HDF5 handles a failing disk badly (a full disk during its own writes ends in
    a segfault at exit); building in memory and writing the bytes with plain
    file I/O turns any disk error into a clean ``OSError``.
    """
    import h5py

    with h5py.File(f"lossgrid-image-{uuid.uuid4().hex}", "w", driver="core", backing_store=False) as f:
        fill(f)
        f.flush()
        return bytes(f.id.get_file_image())


def check_output_path(path: str, what: str = "output", error: type[LossgridError] = ConfigError) -> None:
    """Fail before any work if ``path`` cannot be written (a directory, no parent, no permission)."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise error(f"The {what} path {path} is a directory", "a file name is needed",
                    "pass a file name inside it, for example " + os.path.join(path, "out"))
    if not os.path.isdir(parent):
        why = f"{parent} is a file, not a directory" if os.path.exists(parent) else f"directory {parent} does not exist"
        raise error(f"Cannot write {what} {path}", why, "create the directory or choose another path")
    special = special_file_problem(path) if os.path.exists(path) else None
    if special:  # a named pipe blocks an open; a device would be replaced by a regular file
        raise error(f"Cannot write {what} {path}", special, "choose a path that is a regular file or does not exist")
    if not os.access(parent, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise error(f"Cannot write {what} {path}", "permission denied", "choose a writable path")
    probe = temp_sibling(path, "probe")
    try:  # a real write: a read-only mount or a file system such as /proc refuses only then
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as e:
        raise error(f"Cannot write {what} {path}", f"writing a file in {parent} fails: {e.strerror or e}",
                    "choose a writable path") from None
    remove_quietly(probe)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file (links and spellings resolved)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def refuse_input_as_output(out: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | None],
                           option: str = "--out") -> None:
    """Raise if ``out`` is one of ``inputs`` (``{"--checkpoint": path, ...}``)."""
    for name, path in inputs.items():
        if path and same_file(out, path):
            raise ConfigError(f"{option} {os.fspath(out)} is the same file as {name} {os.fspath(path)}",
                              "lossgrid never writes over one of its own input files",
                              f"choose another {option} path")


def input_file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as an input file, or ``None`` if it can."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return "it is a directory, not a file"
    if not os.path.exists(path):
        return "it does not exist"
    special = special_file_problem(path)  # reading a named pipe or a device could block forever
    if special:
        return special
    if not os.access(path, os.R_OK):
        return "permission denied"
    if os.path.getsize(path) == 0:
        return "it is empty (0 bytes)"
    return None


def truncated_zip_problem(path: str | os.PathLike) -> str | None:
    """Why a file that starts as a zip archive (``torch.save``'s format, ``.npz``) cannot be one: its end,
    where a zip keeps the index of its members, is missing (a copy or download cut short). ``None`` for a
    whole archive or a file that is no zip at all."""
    import zipfile

    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"PK\x03\x04" or zipfile.is_zipfile(fh):
                return None
    except OSError:
        return None
    size = os.path.getsize(path)
    return (f"the file ends early: it starts as a zip archive but its last part, the archive's index, is missing "
            f"(truncated at {size:,} bytes; copied or downloaded only in part?)")


def is_hdf5(path: str | os.PathLike) -> bool:
    """Whether the file starts with the HDF5 signature (corrupt HDF5 files included)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == HDF5_SIGNATURE
    except OSError:
        return False


def os_reason(e: OSError) -> str:
    """A one-line reason from an ``OSError`` (``No space left on device``, ...)."""
    if e.errno is not None and e.strerror:
        return e.strerror if not e.filename else f"{e.strerror}: {e.filename}"
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def output_dir(path: str | os.PathLike, what: str, hint: str = "pass --out with a new or existing directory") -> None:
    """Create the directory ``path`` that a command writes several files into (``what``: the
    demo, the gallery...), or fail with a :class:`ConfigError` saying why."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"The {what} output {path} is a file", f"the {what} writes several files into a directory",
                          hint)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"Cannot create the {what} directory {path}", os_reason(e),
                          "choose a writable directory") from None


#: what a path that is not a regular file is, by its ``stat`` mode
_SPECIAL_FILES = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def special_file_problem(path: str) -> str | None:
    """Why ``path`` (links followed) is not a regular file, e.g. ``"it is a FIFO (named pipe),
    not a regular file"``; ``None`` for a regular file or a path ``os.stat`` cannot reach
    (opening it then says why). Checked before opening: opening a FIFO waits for a writer,
    and reading a device may never end."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # ValueError: a NUL byte in the path
        return None
    if stat.S_ISREG(mode):
        return None
    kind = next((name for is_kind, name in _SPECIAL_FILES if is_kind(mode)), "a special file")
    return f"it is {kind}, not a regular file"


def open_regular(path: str) -> BinaryIO:
    """``path`` opened for binary reading; ``OSError`` unless it is a regular file.

    Call :func:`special_file_problem` first for a clear message; this opens without
    blocking and checks the opened file again, so a FIFO put in the file's place
    in between cannot hang the reader (``O_NONBLOCK`` changes nothing for a regular file).
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def error_text(e: BaseException) -> str:
    """``"Type: message"`` of an exception raised while reading a file (a bare ``MemoryError`` explained)."""
    if isinstance(e, MemoryError) and not str(e):
        return "MemoryError: the file declares more data than memory holds"
    name = type(e).__name__
    if name == "error":  # zlib.error, binascii.error ...: the module says what failed
        name = f"{type(e).__module__}.error"
    return f"{name}: {e}"
