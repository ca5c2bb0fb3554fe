"""Surfaces sharded over processes, GPUs and nodes with ``torch.distributed`` (``torchrun``).

Launched by ``torchrun --nproc-per-node N -m lossgrid surface ...`` (or by
``lossgrid surface --nproc N``, :func:`launch_local`, which starts the same N
processes on this machine), every process runs the same surface command
(:func:`lossgrid.surface.compute.compute_surface` with a :class:`Cluster`):

* each rank loads the model and the data itself and evaluates on its own device
  (``cuda:LOCAL_RANK`` for ``--device cuda``; the CPU otherwise, one process per
  core group) with its own runner;
* rank 0 makes the directions and broadcasts them (every rank evaluates the very
  same bits: a sharded surface equals a one-process run with the same seed);
* rank 0 alone holds the surface file: it decides which points are left (a
  resumed file), publishes each round of points (one round, or the rounds of an
  adaptive grid), and writes every result;
* the points of a round are cut into chunks (``--points-per-call``) that ranks
  *claim* one at a time from an atomic counter in the job's key-value store
  (the ``TCPStore`` that torchrun's rendezvous provides): a fast rank simply
  claims more chunks, a slow one fewer, and no rank waits for another between
  chunks. Workers post each chunk's results to the store; rank 0 collects them
  between its own chunks and writes them (results are a few numbers per point).

Fault tolerance comes from the surface file: killing any rank ends the job
(torchrun stops the others; rank 0 flushes what it has); running the same
command again -- or torchrun's own restart, ``--max-restarts`` -- resumes from
the file, so at most the chunks in flight are computed twice. The store keys of
each attempt are prefixed with torchrun's restart count, so a restarted job never
reads a claim counter of the attempt before it.

Example (two processes on this machine)::

    lossgrid surface --model net.py:make --checkpoint net.pt --nproc 2 --out s.h5
    torchrun --standalone --nproc-per-node 2 -m lossgrid surface ... --out s.h5
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..engine.device import resolve_device
from ..engine.directions import Directions
from ..engine.params import ParamLayout
from ..errors import ConfigError, EvaluationError, is_out_of_memory

log = logging.getLogger(__name__)

#: seconds rank 0 waits for a claimed chunk's results before it says which are missing
RESULT_TIMEOUT = 3600.0
#: seconds a collective may wait (the others wait while rank 0 makes Hessian directions or runs a pilot)
COLLECTIVE_TIMEOUT = 6 * 3600
#: seconds between rank 0's looks at the store while it waits for results
POLL = 0.005

Result = tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]


@contextlib.contextmanager
def _peers() -> Iterator[None]:
    """Turn a collective or store call that fails because another rank stopped into a message."""
    try:
        yield
    except RuntimeError as e:  # torch's DistBackendError / DistNetworkError and gloo's errors
        if is_out_of_memory(e):
            raise
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise EvaluationError("Another process of the sharded job stopped", reason,
                              "see that process's message; the points saved so far are kept: run the same "
                              "command again to resume") from None


def launched() -> bool:
    """Whether this process was started by torchrun (or :func:`launch_local`) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class Cluster:
    """This process's place in a sharded surface job and the job's key-value store."""

    rank: int
    world: int
    local_rank: int
    store: Any
    prefix: str
    backend: str
    rounds: int = 0
    #: chunks each rank evaluated (rank 0 counts every rank's; the others their own)
    chunks: dict[int, int] = field(default_factory=dict)

    @classmethod
    def join(cls, device: str) -> Cluster:
        """Join the job torchrun started (``env://``: RANK, WORLD_SIZE, MASTER_ADDR/PORT): gloo on
        CPUs, NCCL on GPUs. Returns the cluster; the process group lives until :meth:`leave`."""
        import datetime

        import torch.distributed as dist

        try:
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            local = int(os.environ.get("LOCAL_RANK", rank))
        except (KeyError, ValueError) as e:
            raise ConfigError("This process is one of a sharded job but the launcher's settings are incomplete",
                              f"RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers ({type(e).__name__}: {e})",
                              "start the job with torchrun or lossgrid surface --nproc N") from None
        cuda = resolve_device(device).type == "cuda"  # a bad or missing device says so before any rendezvous
        if cuda and local >= torch.cuda.device_count():
            raise ConfigError(f"Rank {rank} would use GPU {local}, but {torch.cuda.device_count()} GPU(s) are "
                              "visible on this node", "a sharded GPU job runs one process per GPU (LOCAL_RANK)",
                              "start at most as many processes per node as it has GPUs")
        backend = "nccl" if cuda and dist.is_nccl_available() else "gloo"
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        # rank 0 may work alone for a long time (Hessian directions, a pilot) while the others wait
        timeout = datetime.timedelta(seconds=COLLECTIVE_TIMEOUT)
        try:
            if cuda:
                torch.cuda.set_device(local)
            # the job's store: torchrun's agent hosts it (TORCHELASTIC_USE_AGENT_STORE), else rank 0 does;
            # every restart of the job gets its own key space, so no rank reads the addresses or the
            # counters of an attempt before it
            agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
            base = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                                 is_master=rank == 0 and not agent, timeout=timeout)
            store = dist.PrefixStore(f"lossgrid/attempt{restart}", base)
            if not dist.is_initialized():
                dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
            job = int(store.add("jobs", 1)) if rank == 0 else 0
        except (RuntimeError, ValueError, KeyError) as e:
            raise ConfigError("Cannot join the sharded job", str(e).strip().splitlines()[0][:300],
                              "check the launcher (torchrun) settings and that every rank can reach MASTER_ADDR") \
                from None
        cluster = cls(rank, world, local, store, "", backend)
        cluster.prefix = f"job{cluster.share(job)}"  # a fresh key space per job (and, by the store, per attempt)
        return cluster

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> str:
        """This rank's device: ``cuda:LOCAL_RANK`` for a CUDA job, else as requested."""
        if torch.device(requested).type == "cuda":
            return f"cuda:{self.local_rank}"
        return requested

    def check_same(self, model_fingerprint: str, data_fingerprint: str) -> None:
        """Refuse a job whose ranks hold different weights or data (a factory without a checkpoint
        draws new weights in every process; a data function may not be deterministic)."""
        mine = (model_fingerprint, data_fingerprint)
        leaders = self.share(mine if self.leader else None)
        if leaders != mine:
            what = "weights" if leaders[0] != mine[0] else "evaluation data"
            raise ConfigError(f"Rank {self.rank} holds other {what} than rank 0",
                              "every rank must evaluate the same model on the same data, or the surface would mix "
                              "them", "pass a --checkpoint (a factory alone draws new weights in every process) and "
                              "data that loads the same everywhere")

    def leave(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    # -- what rank 0 decides, every rank gets ------------------------------------------------
    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (small objects: point indices, settings)."""
        import torch.distributed as dist

        box = [value if self.leader else None]
        with _peers():
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def share_tensor(self, tensor: torch.Tensor | None, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """Rank 0's ``tensor`` (exact bits) on every rank; the others pass ``None``."""
        import torch.distributed as dist

        device = torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")
        buf = tensor.detach().to(device, dtype).contiguous() if self.leader and tensor is not None \
            else torch.empty(tuple(shape), dtype=dtype, device=device)
        with _peers():
            dist.broadcast(buf, src=0)
        return buf.cpu()

    # -- one round of points -----------------------------------------------------------------
    def evaluate(self, indices: np.ndarray, step: int, compute: Callable[[np.ndarray], Result],
                 commit: Callable[[np.ndarray, Result], None], names: Sequence[str]) -> None:
        """Evaluate the points ``indices`` (the same on every rank) in chunks of ``step`` claimed
        dynamically; rank 0 ``commit``s every chunk's result, its own as they come and the
        workers' from the store; ``names`` are the extra per-point arrays a result holds."""
        with _peers():
            self._evaluate(indices, step, compute, commit, names)

    def _evaluate(self, indices: np.ndarray, step: int, compute: Callable[[np.ndarray], Result],
                  commit: Callable[[np.ndarray, Result], None], names: Sequence[str]) -> None:
        self.rounds += 1
        key = f"{self.prefix}/round{self.rounds}"
        chunks = [indices[i:i + step] for i in range(0, len(indices), step)]
        self._read = 0  # workers' posts of this round read so far
        written = 0
        while True:
            claimed = int(self.store.add(f"{key}/claim", 1)) - 1
            if claimed >= len(chunks):
                break
            result = compute(chunks[claimed])
            self.chunks[self.rank] = self.chunks.get(self.rank, 0) + 1
            if self.leader:
                commit(chunks[claimed], result)
                written += 1 + self._collect(key, chunks, commit, names)
            else:  # numbered posts: rank 0 reads each once, in order, one store call per result
                post = int(self.store.add(f"{key}/posted", 1)) - 1
                self.store.set(f"{key}/post/{post}", _encode(claimed, self.rank, result, names))
        if self.leader:
            t0 = time.monotonic()
            while written < len(chunks):
                got = self._collect(key, chunks, commit, names)
                written += got
                if not got:
                    if time.monotonic() - t0 > RESULT_TIMEOUT:
                        raise EvaluationError(f"{len(chunks) - written} chunk(s) of the surface never came back "
                                              "from the workers", f"no result after {RESULT_TIMEOUT:.0f} s",
                                              "run the same command again: the points saved so far are kept")
                    time.sleep(POLL)
        self.share(None)  # every rank leaves the round together, after rank 0 has written it all

    def _collect(self, key: str, chunks: list[np.ndarray], commit: Callable[[np.ndarray, Result], None],
                 names: Sequence[str]) -> int:
        """Commit the workers' results posted since the last look; returns how many."""
        posted = int(self.store.add(f"{key}/posted", 0))
        got = 0
        for post in range(self._read, posted):
            name = f"{key}/post/{post}"
            if not self.store.check([name]):  # numbered but not yet set (or its worker died): later; never
                break                          # block in the store, so that SIGTERM reaches rank 0 at once
            claimed, rank, result = _decode(self.store.get(name), chunks, names)
            self.chunks[rank] = self.chunks.get(rank, 0) + 1
            commit(chunks[claimed], result)
            self.store.delete_key(name)
            got += 1
        self._read += got
        return got


def _encode(claimed: int, rank: int, result: Result, names: Sequence[str]) -> bytes:
    """A chunk's result as raw float64 values (no pickle): chunk, rank, losses, accuracies, extras."""
    loss, acc, extra = result
    return np.concatenate([[float(claimed), float(rank)], np.asarray(loss, np.float64),
                           np.asarray(acc, np.float64), *[np.asarray(extra[n], np.float64) for n in names]]).tobytes()


def _decode(blob: bytes, chunks: list[np.ndarray], names: Sequence[str]) -> tuple[int, int, Result]:
    values = np.frombuffer(blob, dtype=np.float64)
    claimed, rank = (int(values[0]), int(values[1])) if values.size >= 2 else (-1, -1)
    k = len(chunks[claimed]) if 0 <= claimed < len(chunks) else -1
    if k < 0 or values.size != 2 + k * (2 + len(names)):
        raise EvaluationError("A worker's result does not fit the surface",
                              f"{values.size} values for chunk {claimed}",
                              "run every rank with the same lossgrid version and options")
    parts = values[2:].reshape(2 + len(names), k)
    return claimed, rank, (parts[0].copy(), parts[1].copy(),
                           {n: parts[2 + i].copy() for i, n in enumerate(names)})


def share_directions(cluster: Cluster, directions: Any, model: torch.nn.Module, dir_type: str) -> Any:
    """Rank 0's directions on every rank: their settings, then their values bit for bit."""
    head = cluster.share(None if directions is None else
                         (directions.layout, directions.ndim, dict(directions.meta), str(directions.x[0].dtype)))
    if head is None:
        raise ConfigError("Rank 0 has no directions to share")
    layout, ndim, meta, dtype = head
    if ParamLayout.from_model(model, layout.dir_type) != layout:
        raise ConfigError("The ranks of a sharded job hold different models",
                          "this rank's model does not have rank 0's tensors",
                          "start every rank with the same --model and --checkpoint")
    flat = cluster.share_tensor(directions.flat() if cluster.leader else None, (ndim, layout.size),
                                getattr(torch, dtype.split(".")[-1]))
    if cluster.leader:
        return directions
    device = next(iter(model.parameters())).device
    rows = [list(layout.unflatten(flat[i].to(device)).values()) for i in range(ndim)]
    return Directions(layout, rows[0], rows[1] if ndim == 2 else None, meta)


# -- starting the processes on this machine ---------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_local(nproc: int, argv: Sequence[str]) -> int:
    """Run ``lossgrid ARGV`` as ``nproc`` processes of one job on this machine, as
    ``torchrun --standalone --nproc-per-node NPROC`` would (the same environment: RANK,
    LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT, OMP_NUM_THREADS); returns the job's exit code.

    If one process fails, the others are stopped (SIGTERM: rank 0 saves what it has) and
    the failing process's exit code is returned; only rank 0 prints.
    """
    if nproc < 1:
        raise ConfigError(f"--nproc {nproc} is invalid", hint="pass --nproc 1 or more")
    port = free_port()
    threads = max(1, (os.cpu_count() or 1) // nproc)
    procs = []
    for rank in range(nproc):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
               "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        env.setdefault("OMP_NUM_THREADS", str(threads))
        quiet = {} if rank == 0 else {"stdout": subprocess.DEVNULL}
        procs.append(subprocess.Popen([sys.executable, "-m", "lossgrid", *argv], env=env, **quiet))
    code = 0
    try:
        while None in [p.poll() for p in procs]:  # poll every process (any() would stop at the first)
            failed = [p for p in procs if p.returncode not in (None, 0)]
            if failed:
                code = failed[0].returncode
                _stop(procs)
                break
            time.sleep(0.05)
        for p in procs:
            p.wait()
    except BaseException:  # Ctrl-C or SIGTERM of the launcher: stop the job, rank 0 saves its points
        _stop(procs)
        raise
    if code < 0:  # killed by a signal: report it as a failure, as shells do
        code = 128 - code
    return code or next((p.returncode for p in procs if p.returncode), 0)


#: seconds the other processes get to stop after SIGTERM before they are killed
GRACE = 5.0


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to every live process (rank 0 closes the file), SIGKILL after :data:`GRACE` seconds to
    those blocked in a collective with a dead peer (every chunk written so far is on disk already)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + GRACE
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
