"""The on-disk cache of serialized TensorRT engines (plain bytes: no TensorRT needed here).

Building an engine takes seconds to minutes; a serialized engine is only valid
for the TensorRT version, the GPU model and the build settings that made it. So
an entry is keyed by a hash of everything that goes into the build:

    ONNX bytes, strategy, precision, batch profile (min/opt/max), GPU name,
    compute capability and TensorRT version

and lives in the user's cache directory (``cache_dir``, else
``$XDG_CACHE_HOME/lossgrid/tensorrt``, else ``~/.cache/lossgrid/tensorrt``).

Entries are written atomically (a temporary sibling, synced, then ``os.replace``,
see :mod:`lossgrid._files`): a crash leaves the old entry or none, never half of
one. Each entry carries a header and a SHA-256 of the engine bytes, so a
truncated or corrupt file is detected before TensorRT sees it; such an entry, or
one TensorRT cannot deserialize (a driver update, say), is rebuilt with a logged
warning. Failing to write the cache (a read-only home) is a warning too: the
engine built in memory is used all the same.

Example:
    >>> import tempfile
    >>> cache = EngineCache(tempfile.mkdtemp())
    >>> key = cache_key(b"onnx", strategy="inputs", precision="fp32", batch_profile=(1, 64, 64),
    ...                 gpu_name="GPU", capability=(9, 0), trt_version="10.0")
    >>> engine, hit, path = cache.get_or_build(key, lambda: b"plan", lambda data: data)
    >>> engine, hit
    (b'plan', False)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from typing import TypeVar

from ..._files import os_reason, publish_bytes

log = logging.getLogger(__name__)
T = TypeVar("T")

#: first bytes of every cache entry (format version 1), then the SHA-256 of the engine bytes
MAGIC = b"lossgrid-trt-engine-v1\n"
DIGEST = 32
SUFFIX = ".engine"


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> str:
    """``cache_dir``, else ``$XDG_CACHE_HOME/lossgrid/tensorrt``, else ``~/.cache/lossgrid/tensorrt``."""
    if cache_dir is not None:
        return os.fspath(cache_dir)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lossgrid", "tensorrt")


def cache_key(onnx_bytes: bytes, *, strategy: str, precision: str, batch_profile: tuple[int, int, int],
              gpu_name: str, capability: tuple[int, int], trt_version: str) -> str:
    """A hex SHA-256 over everything a serialized engine depends on (see the module docs)."""
    fields = {"onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(), "strategy": strategy, "precision": precision,
              "batch_profile": [int(b) for b in batch_profile], "gpu_name": gpu_name,
              "capability": [int(c) for c in capability], "trt_version": trt_version, "format": MAGIC.decode().strip()}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def pack(engine: bytes) -> bytes:
    """An entry's file contents: header, digest, engine bytes."""
    return MAGIC + hashlib.sha256(engine).digest() + engine


def unpack(data: bytes) -> bytes | None:
    """The engine bytes of an entry, or ``None`` when the header or the digest does not match."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + DIGEST:
        return None
    digest, engine = data[len(MAGIC):len(MAGIC) + DIGEST], data[len(MAGIC) + DIGEST:]
    return engine if hashlib.sha256(engine).digest() == digest else None


class EngineCache:
    """Serialized engines in one directory, one file per :func:`cache_key`.

    Args:
        directory: where entries live (created on the first write).
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = os.fspath(directory)

    def path(self, key: str) -> str:
        """The file of an entry."""
        return os.path.join(self.directory, key + SUFFIX)

    def load(self, key: str) -> bytes | None:
        """The engine bytes stored under ``key``; ``None`` if absent or corrupt (logged)."""
        path = self.path(key)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("TensorRT engine cache entry %s cannot be read (%s); rebuilding", path, os_reason(e))
            return None
        engine = unpack(data)
        if engine is None:
            log.warning("TensorRT engine cache entry %s is corrupt (bad header or checksum); rebuilding", path)
        return engine

    def store(self, key: str, engine: bytes) -> bool:
        """Write an entry atomically; ``False`` (and a warning) if the cache cannot be written."""
        path = self.path(key)
        try:
            os.makedirs(self.directory, exist_ok=True)
            publish_bytes(path, pack(engine))
        except OSError as e:
            log.warning("cannot write the TensorRT engine cache entry %s (%s); the engine is used without caching",
                        path, os_reason(e))
            return False
        return True

    def get_or_build(self, key: str, build: Callable[[], bytes], deserialize: Callable[[bytes], T | None]
                     ) -> tuple[T, bool, str]:
        """The deserialized engine of ``key``: from the cache when an entry exists and
        deserializes, else from ``build()`` (stored for next time).

        ``deserialize`` returns ``None`` or raises for bytes it cannot use; a cached
        entry failing so is rebuilt with a warning, a freshly built one raises
        ``RuntimeError``. Returns ``(engine, cache_hit, path)``.
        """
        path = self.path(key)
        cached = self.load(key)
        if cached is not None:
            try:
                engine = deserialize(cached)
            except Exception as e:  # TensorRT raises or returns None on plans it cannot use
                log.warning("TensorRT engine cache entry %s cannot be deserialized (%s: %s); rebuilding",
                            path, type(e).__name__, e)
                engine = None
            else:
                if engine is None:
                    log.warning("TensorRT engine cache entry %s cannot be deserialized; rebuilding", path)
            if engine is not None:
                return engine, True, path
        data = build()
        engine = deserialize(data)
        if engine is None:
            raise RuntimeError("TensorRT cannot deserialize the engine it has just built")
        self.store(key, data)
        return engine, False, path
