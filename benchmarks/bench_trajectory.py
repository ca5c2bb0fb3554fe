"""Peak memory and time of the streamed trajectory PCA (lossgrid.trajectory.compute).

Writes N checkpoints of a P-parameter model (a seeded random walk towards a minimum)
to a temporary directory, then, each in a fresh process so that peak RSS is its own:

* ``stream``: :func:`compute_trajectory` on all N checkpoints (the full size: 1,000 x 1M
  parameters, 4 GB of safetensors files, an 8 GB float64 matrix if held in memory);
* ``baseline``: the in-memory reference (every row stacked, scikit-learn's PCA) on the
  first ``--baseline-n`` checkpoints, and ``stream`` on the same files; their results are
  compared after timing, and the time and peak-RSS ratios reported.

    python benchmarks/bench_trajectory.py benchmarks/trajectory.json            # full size
    python benchmarks/bench_trajectory.py /tmp/t.json --n 50 --params 100000    # quick

On a machine shared with other work, set OMP_NUM_THREADS=1: BLAS threads that spin
while waiting for a busy core made the same run 60x slower here.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import tempfile
import time
from typing import Any

import numpy as np


def make_model(params: int) -> Any:
    """A Linear layer with about ``params`` parameters (1000 outputs)."""
    from torch import nn

    return nn.Linear(max(1, params // 1000 - 1), 1000)


def write_run(directory: str, n: int, params: int, fmt: str) -> list[str]:
    """N checkpoints: a seeded, noisy walk from random weights towards a fixed point."""
    import torch

    gen = torch.Generator().manual_seed(0)
    state = {k: v.clone() for k, v in make_model(params).state_dict().items()}
    target = {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in state.items()}
    paths = []
    for i in range(n):
        state = {k: v + 0.05 * (target[k] - v) + 0.002 * torch.randn(v.shape, generator=gen)
                 for k, v in state.items()}
        path = os.path.join(directory, f"epoch_{i + 1}.{'safetensors' if fmt == 'safetensors' else 'pt'}")
        if fmt == "safetensors":
            from safetensors.torch import save_file

            save_file(state, path)
        else:
            torch.save(state, path)
        paths.append(path)
    return paths


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def stream_phase(paths: list[str], params: int, memory_bytes: int) -> dict[str, Any]:
    from lossgrid.trajectory import compute as tm

    model = make_model(params)
    rss0 = _rss_mb()
    reads = []
    t0 = time.perf_counter()
    traj = tm.compute_trajectory(model, paths, memory_bytes=memory_bytes,
                                 progress=lambda done, total: reads.append(total) if not reads else None)
    seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(_rss_mb(), 1), "rss_before_mb": round(rss0, 1),
            "reads": reads[0] if reads else 0, "explained_variance_ratio": traj.explained_variance_ratio.tolist(),
            "coords": traj.coords.tolist(),
            "component_sample": traj.directions.flat()[:, ::max(1, params // 1000)].double().numpy().tolist()}


def dense_phase(paths: list[str], params: int) -> dict[str, Any]:
    """The reference's way: every row in memory (float64), scikit-learn's PCA."""
    from sklearn.decomposition import PCA

    from lossgrid.models import read_state

    model = make_model(params)
    rss0 = _rss_mb()
    t0 = time.perf_counter()

    def flat(path: str) -> np.ndarray:
        model.load_state_dict(read_state(path))
        return np.concatenate([p.detach().double().numpy().ravel() if p.dim() > 1 else np.zeros(p.numel())
                               for p in model.parameters()])

    final = flat(paths[-1])
    matrix = np.stack([flat(p) - final for p in paths])
    pca = PCA(n_components=2).fit(matrix)
    coords = matrix @ pca.components_.T
    seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(_rss_mb(), 1), "rss_before_mb": round(rss0, 1),
            "explained_variance_ratio": pca.explained_variance_ratio_.tolist(), "coords": coords.tolist(),
            "component_sample": pca.components_[:, ::max(1, params // 1000)].tolist()}


def in_child(fn: Any, *args: Any) -> dict[str, Any]:
    """``fn(*args)`` in a fresh (spawned) process: its peak RSS is its own."""
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def agreement(stream: dict[str, Any], dense: dict[str, Any]) -> dict[str, float]:
    """Largest differences, components and coordinates compared up to sign."""
    a, b = np.asarray(stream["component_sample"]), np.asarray(dense["component_sample"])
    signs = np.sign(np.sum(a * b, axis=1))
    ca, cb = np.asarray(stream["coords"]) * signs, np.asarray(dense["coords"])
    return {"explained_variance_ratio_max_rel": float(np.max(np.abs(
                np.asarray(stream["explained_variance_ratio"]) / np.asarray(dense["explained_variance_ratio"]) - 1))),
            "component_max_abs": float(np.max(np.abs(a * signs[:, None] - b))),
            "coords_max_rel": float(np.max(np.abs(ca - cb)) / max(np.max(np.abs(cb)), 1e-300))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="JSON result path")
    parser.add_argument("--n", type=int, default=1000, help="checkpoints")
    parser.add_argument("--params", type=int, default=1_000_000, help="parameters per checkpoint")
    parser.add_argument("--format", choices=("safetensors", "torch"), default="safetensors")
    parser.add_argument("--memory-mb", type=int, default=1024, help="compute_trajectory's memory_bytes, in MiB")
    parser.add_argument("--baseline-n", type=int, default=100, help="checkpoints of the in-memory baseline")
    parser.add_argument("--workdir", help="where to write the checkpoints (default: a temporary directory)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="lossgrid-traj-", dir=args.workdir)
    try:
        t0 = time.perf_counter()
        paths = write_run(work, args.n, args.params, args.format)
        write_s = time.perf_counter() - t0
        size = sum(os.path.getsize(p) for p in paths)
        print(f"wrote {args.n} checkpoints ({size / 2**30:.2f} GiB) in {write_s:.1f} s")
        memory = args.memory_mb << 20
        sub = paths[:args.baseline_n]
        dense = in_child(dense_phase, sub, args.params)
        small = in_child(stream_phase, sub, args.params, memory)
        print(f"baseline ({len(sub)} checkpoints): dense {dense['seconds']} s, {dense['peak_rss_mb']} MB; "
              f"streamed {small['seconds']} s, {small['peak_rss_mb']} MB")
        full = in_child(stream_phase, paths, args.params, memory)
        print(f"streamed ({args.n} checkpoints): {full['seconds']} s, peak RSS {full['peak_rss_mb']} MB, "
              f"{full['reads']} reads")
        agree = agreement(small, dense)
        dense_bytes = args.n * args.params * 8
        result = {
            "n": args.n, "params": args.params, "format": args.format, "memory_mb": args.memory_mb,
            "checkpoint_bytes": size, "write_seconds": round(write_s, 1), "cores": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "stream_full": {k: v for k, v in full.items() if k in ("seconds", "peak_rss_mb", "rss_before_mb",
                                                                     "reads", "explained_variance_ratio")},
            "dense_matrix_mb_full": round(dense_bytes / 2**20, 1),
            "peak_rss_over_dense_matrix_full": round(full["peak_rss_mb"] / (dense_bytes / 2**20), 3),
            "baseline_n": len(sub),
            "baseline_dense": {k: dense[k] for k in ("seconds", "peak_rss_mb", "rss_before_mb")},
            "baseline_stream": {k: small[k] for k in ("seconds", "peak_rss_mb", "rss_before_mb", "reads")},
            "baseline_time_ratio_stream_over_dense": round(small["seconds"] / dense["seconds"], 3),
            "baseline_peak_rss_ratio_stream_over_dense": round(small["peak_rss_mb"] / dense["peak_rss_mb"], 3),
            "agreement_with_sklearn": agree,
            "agree": agree["explained_variance_ratio_max_rel"] < 1e-5 and agree["component_max_abs"] < 1e-5
            and agree["coords_max_rel"] < 1e-5,
        }
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
