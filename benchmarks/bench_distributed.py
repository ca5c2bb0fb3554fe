"""Sharded surfaces: 1 vs 2 processes on this machine (gloo, CPU), the per-chunk overheads
of the scheme, and a model of how it scales to 8 GPUs x N nodes.

Measured in one run, as whole commands (start-up included):
  * ``1 process``: ``lossgrid surface`` with as many intra-op threads as the machine has cores;
  * ``1 process, 1 thread`` and ``2 processes, 1 thread each`` (``--nproc 2``): the same
    work split by the sharding instead of by threads;
then every surface is checked to equal the first bit for bit (same thread count) or to 1e-6
(different thread counts reduce in another order).

Overheads, measured in-process: a claim (``store.add``), posting a result (``store.set``),
rank 0 reading one (``store.get`` + ``delete_key``), and rank 0's write of one chunk into the
surface file (values, flush, ``done`` mask, flush).

    python benchmarks/bench_distributed.py --out benchmarks/baseline/distributed-<date>.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run(args: list[str], env: dict[str, str]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "lossgrid", *args, "--json", "-q"], cwd=ROOT, env=env,
                       capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{r.stderr[-2000:]}")
    return wall, json.loads(r.stdout)


def store_overheads(n: int = 2000) -> dict[str, float]:
    """Microseconds per claim, post and read on a local TCPStore (what every chunk costs)."""
    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", 0, 1, True, timeout=datetime.timedelta(seconds=30))
    blob = np.zeros(2 + 8 * 3, np.float64).tobytes()  # a chunk of 8 points: loss, acc, standard error
    t0 = time.perf_counter()
    for _ in range(n):
        store.add("claim", 1)
    claim = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for i in range(n):
        store.set(f"post/{i}", blob)
    post = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for i in range(n):
        store.get(f"post/{i}")
        store.delete_key(f"post/{i}")
    read = (time.perf_counter() - t0) / n
    return {"claim_us": claim * 1e6, "post_us": post * 1e6, "read_us": read * 1e6}


def write_overhead(shape: tuple[int, int] = (51, 51), k: int = 8) -> float:
    """Seconds for rank 0 to write one chunk of ``k`` points into a surface file (two flushes)."""
    from lossgrid.surface.file import SurfaceWriter

    xs, ys = np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1])
    with tempfile.TemporaryDirectory() as d:
        writer = SurfaceWriter(os.path.join(d, "s.h5"), xs, ys, {"kind": "bench"}, {}, None, extra=("train_loss_se",))
        try:
            todo = np.arange(shape[0] * shape[1])
            t0 = time.perf_counter()
            chunks = 0
            for start in range(0, len(todo), k):
                chunk = todo[start:start + k]
                writer.write(chunk, np.ones(len(chunk)), np.ones(len(chunk)), {"train_loss_se": np.ones(len(chunk))})
                chunks += 1
            return (time.perf_counter() - t0) / chunks
        finally:
            writer.close()


def scaling_model(point_seconds: float, k: int, overhead: dict[str, float], write_s: float, points: int,
                  gpus: int) -> dict[str, float]:
    """Projected wall time of ``points`` grid points on ``gpus`` devices: every device evaluates
    chunks of ``k`` points (``point_seconds`` each) plus a claim and a post; rank 0 also writes
    every chunk (serially) and evaluates what time is left. Start-up and the direction
    broadcast are left out (a few seconds)."""
    chunks = -(-points // k)
    per_chunk = k * point_seconds + (overhead["claim_us"] + overhead["post_us"]) * 1e-6
    compute = chunks * per_chunk / gpus
    rank0_writes = chunks * (write_s + overhead["read_us"] * 1e-6)
    return {"gpus": gpus, "compute_s": compute, "rank0_write_s": rank0_writes,
            "wall_s": max(compute + rank0_writes / gpus, rank0_writes),
            "efficiency": compute / max(compute + rank0_writes / gpus, rank0_writes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", default="-1:1:21")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--out")
    args = parser.parse_args()
    import torch

    from lossgrid.surface.file import load_surface
    from lossgrid.zoo import resnet_digits

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as d:
        ckpt = os.path.join(d, "net.pt")
        torch.manual_seed(0)
        torch.save(resnet_digits().state_dict(), ckpt)
        base = ["surface", "--model", "lossgrid.zoo:resnet_digits", "--checkpoint", ckpt, "--data", "digits",
                "--samples", str(args.samples), f"--x={args.grid}", f"--y={args.grid}", "--strategy", "loop"]
        env = {**os.environ, "LOSSGRID_NO_MALLOC_TUNING": ""}
        env.pop("LOSSGRID_NO_MALLOC_TUNING")
        rows = []
        for label, extra, threads in (("1 process", [], cores), ("1 process, 1 thread", [], 1),
                                      ("2 processes, 1 thread each", ["--nproc", "2"], 1)):
            out = os.path.join(d, f"{len(rows)}.h5")
            wall, summary = run([*base, *extra, "--out", out], {**env, "OMP_NUM_THREADS": str(threads)})
            rows.append({"run": label, "threads_per_process": threads, "wall_s": round(wall, 3),
                         "eval_s": summary["eval_seconds"], "points": summary["points_computed"],
                         "points_x_samples_per_s": summary["points_x_samples_per_s"], "file": out})
        ref = load_surface(rows[1]["file"]).loss
        for row in rows:
            loss = load_surface(row.pop("file")).loss
            row["bit_identical_to_1_thread"] = bool(np.array_equal(loss, ref))
            row["max_rel_diff"] = float(np.max(np.abs(loss - ref) / np.abs(ref)))
        one = rows[1]
        for row in rows:
            row["speedup_vs_1_process_1_thread"] = round(one["wall_s"] / row["wall_s"], 3)
            row["eval_speedup_vs_1_process_1_thread"] = round(one["eval_s"] / row["eval_s"], 3)
    overhead = store_overheads()
    write_s = write_overhead()
    # a GPU grid point of the paper's ResNet-56 on 50,000 images: 12.6 TFLOP; at 20 TFLOP/s (an H100 or
    # H200 in tf32 at a realistic share of peak) about 0.63 s; the projection below uses that
    point_s = 12.6e12 / 20e12
    projection = [scaling_model(point_s, 4, overhead, write_s, 51 * 51, g) for g in (1, 8, 16, 64, 512)]
    result = {"date": datetime.date.today().isoformat(), "cores": cores, "torch": torch.__version__,
              "grid": args.grid, "samples": args.samples, "runs": rows, "store_overheads": overhead,
              "rank0_write_per_chunk_s": write_s, "projection_resnet56_51x51": projection,
              "projection_assumes": {"seconds_per_point": point_s, "points_per_call": 4,
                                     "note": "measured store and write costs of this machine; GPU point time "
                                             "from FLOPs at 20 TFLOP/s, not measured"}}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
