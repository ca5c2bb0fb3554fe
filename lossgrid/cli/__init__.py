"""The ``lossgrid`` command line (Click). Commands only parse, build specs, make
one library call and echo; all work happens in the library."""

from __future__ import annotations

import os
import platform
import sys

# glibc malloc returns big activation buffers to the OS after every op, which
# makes torch CPU code slow and noisy; these thresholds keep them (FACTS.md:
# 1.4-1.6x on the per-point loop, measured again in benchmarks/).
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=68719476736"
HEAVY_COMMANDS = {"surface", "demo", "export"}


def _should_reexec(argv: list[str], environ: dict[str, str]) -> bool:
    if len(argv) < 2 or argv[1] not in HEAVY_COMMANDS or "--help" in argv:
        return False
    if environ.get("LOSSGRID_NO_MALLOC_TUNING") or "mmap_threshold" in environ.get("GLIBC_TUNABLES", ""):
        return False
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def main() -> None:
    """Console entry point: re-executes itself once with the malloc tuning, then runs."""
    if _should_reexec(sys.argv, dict(os.environ)):
        env = dict(os.environ)
        old = env.get("GLIBC_TUNABLES")
        env["GLIBC_TUNABLES"] = f"{old}:{MALLOC_TUNABLES}" if old else MALLOC_TUNABLES
        try:
            os.execve(sys.executable, [sys.executable, "-m", "lossgrid.cli", *sys.argv[1:]], env)
        except OSError:
            pass  # run untuned rather than not at all
    from .main import cli

    cli(prog_name="lossgrid")
