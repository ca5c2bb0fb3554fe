"""The ``lossgrid`` command line (Click). Commands only parse, build specs, make
one library call and echo; all work happens in the library."""

from __future__ import annotations

import os
import platform
import signal
import sys

from ._signals import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    Terminated,
    exit_on_signal,
    install_signal_handlers,
    interrupted_message,
    terminated_message,
)

# glibc malloc returns big activation buffers to the OS after every op, which
# makes torch CPU code slow and noisy; these thresholds keep them (measured
# 1.4-1.6x on the per-point loop, in benchmarks/bench_surface.py --malloc both).
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=68719476736"
HEAVY_COMMANDS = {"surface", "demo", "export", "bench", "hessian", "audit", "evolve", "trajectory", "train",
                  "gallery"}


def _should_reexec(argv: list[str], environ: dict[str, str]) -> bool:
    if len(argv) < 2 or argv[1] not in HEAVY_COMMANDS or "--help" in argv:
        return False
    if environ.get("LOSSGRID_NO_MALLOC_TUNING") or "mmap_threshold" in environ.get("GLIBC_TUNABLES", ""):
        return False
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def main(argv: list[str] | None = None) -> None:
    """Console entry point: re-executes itself once with the malloc tuning, then runs
    ``lossgrid ARGV`` (``sys.argv[1:]`` by default) and exits with its code.

    Ctrl-C (exit 130) and SIGTERM/SIGHUP (exit 1) end every command with a
    message and no traceback, from start-up (imports) to the last write.
    """
    install_signal_handlers()
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv is None and _should_reexec(sys.argv, dict(os.environ)):
            env = dict(os.environ)
            old = env.get("GLIBC_TUNABLES")
            env["GLIBC_TUNABLES"] = f"{old}:{MALLOC_TUNABLES}" if old else MALLOC_TUNABLES
            try:
                os.execve(sys.executable, [sys.executable, "-m", "lossgrid.cli", *sys.argv[1:]], env)
            except OSError:
                pass  # run untuned rather than not at all
        code = _run(args)
        exit_on_signal(code)  # the run is over: a signal from now on ends it with its own code
        code = _flush_stdout(code)
        exit_on_signal(code)
    except KeyboardInterrupt:
        code = _stop(interrupted_message(args), EXIT_INTERRUPTED)
    except Terminated as e:
        code = _stop(terminated_message(e, args), EXIT_TERMINATED)
    sys.exit(code)


#: the arguments of the running command (``lossgrid surface --nproc`` starts its processes with them)
ARGS: list[str] | None = None


def _run(args: list[str]) -> int:
    import click

    from .group import cli

    global ARGS
    ARGS = list(args)

    try:
        rv = cli.main(args=args, prog_name="lossgrid", standalone_mode=False)
    except click.exceptions.Abort:  # Click's name for Ctrl-C while parsing or prompting
        raise KeyboardInterrupt from None
    except click.ClickException as e:
        e.show()
        return e.exit_code
    return rv if isinstance(rv, int) else 0


def _flush_stdout(code: int) -> int:
    """Flush what the command printed; a full or closed output is an error with a message (not a traceback
    while the interpreter exits)."""
    try:
        sys.stdout.flush()
    except OSError as e:
        from .group import output_failed_message

        sys.stderr.write(f"Error: {output_failed_message(e)}\n")
        return 1
    return code


def _stop(message: str, code: int) -> int:
    """Print why we stop; further signals are ignored while the interpreter closes files."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    try:
        sys.stderr.write(f"\n{message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    return code
