"""The command group and its error handling."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from .. import __version__
from .._files import os_reason
from ..errors import LossgridError


class LossgridGroup(click.Group):
    """Turns :class:`LossgridError` and ``MemoryError`` into exit code 1 with a message,
    no traceback (Ctrl-C and SIGTERM are handled by :func:`lossgrid.cli.main`, from start-up on)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LossgridError as e:
            raise click.ClickException(str(e)) from None
        except MemoryError:
            raise click.ClickException(
                "Out of memory. Why: this machine has too little free memory for the requested work. "
                "Hint: lower --points-per-call, --batch-size or --samples, or use a smaller grid.") from None
        except SystemExit as e:  # lossgrid itself never exits inside a command: this is the user's code
            raise click.ClickException(user_exit_message(e)) from None
        except OSError as e:  # lossgrid's files give LossgridErrors: what is left is the terminal or a pipe
            raise click.ClickException(output_failed_message(e)) from None


def output_failed_message(e: OSError) -> str:
    """Why a command's printed output could not be written; the standard output is closed off, so
    that nothing fails again while the interpreter exits."""
    silence_stdout()
    return (f"Cannot write the output ({os_reason(e)}). Why: the standard output is full or closed (a full disk, "
            "a pipe whose reader has gone). Hint: send the output where there is room, or use --out FILE where "
            "the command has it.")


def silence_stdout() -> None:
    """Point the standard output at /dev/null (best effort)."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):
        pass


def user_exit_message(e: SystemExit) -> str:
    """Why a command ended without a result when code of the user's (a model factory, a data function,
    a loss, a batch adapter) called ``sys.exit``, and where."""
    frame = e.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    where = f" at {frame.tb_frame.f_code.co_filename}:{frame.tb_lineno}" if frame is not None else ""
    return (f"Your code called sys.exit({e.code!r}){where} while lossgrid was running it. Why: lossgrid calls your "
            "model factory, data function, loss and batch adapter; ending the process there stops the command "
            "without a result. Hint: return a value, or raise an exception, instead of calling sys.exit.")


@click.group(cls=LossgridGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lossgrid")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """lossgrid: fast, filter-normalized loss landscapes of neural networks.

    Start with `lossgrid demo --out DIR`, then `lossgrid surface --help`.
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _register() -> None:
    from .audit import audit
    from .bench import bench
    from .demo import demo
    from .evolve import evolve
    from .export import export, inspect
    from .gallery import gallery
    from .hessian import hessian
    from .plot import plot
    from .surface import surface
    from .train import train
    from .trajectory import trajectory
    from .zoo import zoo

    for command in (surface, plot, demo, export, inspect, bench, hessian, audit, evolve, trajectory, train,
                    gallery, zoo):
        cli.add_command(command)


_register()
