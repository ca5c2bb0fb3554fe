"""Surface throughput of every backend/strategy against the plain per-point loop, in one run.

For each model the same grid points are evaluated by
  * ``reference``: the plain per-point PyTorch loop (load_state_dict, forward in
    batches of 128, average) -- what the reference implementation does per point,
    minus its disk and DataLoader overheads;
  * the torch runner (``loop``, ``vmap``), the onnxruntime runner (``wide``:
    K-wide graph with weights as inputs, ``baked``: per-point sessions with the
    weights as initializers) and ``auto`` (times all of them, keeps the fastest);
then results are checked to agree with the reference (loss 1e-4 relative) and
throughput is reported as grid points x samples per second, as a ratio to the
reference, and as a percentage of this machine's fp32 matmul peak (the best of
torch and ONNX Runtime on a square GEMM of about 20 ms, measured in the same run by
``lossgrid.bench.machine.peak_gemm``; ``lossgrid bench`` times every backend, strategy and
precision of one model the same way).

Run with ``--malloc both`` to measure the effect of the glibc malloc tuning
(each setting in its own process, since it must be set before start-up).

    python benchmarks/bench_surface.py --out benchmarks/results.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

RUNNERS = [("torch", "loop"), ("torch", "vmap"), ("torch", "wide"), ("onnxruntime", "wide"), ("onnxruntime", "baked"),
           ("auto", "auto")]


def cases(quick: bool):
    from lossgrid.data import load_data
    from lossgrid.zoo import mlp_mnist, resnet20, resnet_digits

    gen = torch.Generator().manual_seed(0)
    digits = load_data("digits:train")
    n_r20 = 256 if quick else 512
    yield "resnet_digits (demo CNN, 8x8 digits)", resnet_digits(), digits.x, digits.y, 8 if quick else 16
    yield ("resnet20 (32x32 RGB)", resnet20(), torch.randn(n_r20, 3, 32, 32, generator=gen),
           torch.randint(0, 10, (n_r20,), generator=gen), 4 if quick else 8)
    yield ("mlp 784-512-512-10", mlp_mnist(), torch.randn(2048, 784, generator=gen),
           torch.randint(0, 10, (2048,), generator=gen), 8 if quick else 16)


def matmul_peak() -> dict[str, float]:
    """fp32 GEMM GFLOP/s of torch and ONNX Runtime on this CPU (:func:`lossgrid.bench.machine.peak_gemm`)."""
    from lossgrid.bench.machine import peak_gemm

    peak = peak_gemm("fp32", torch.device("cpu"))
    return {lib: 1000 * (peak[f"{lib}_tflops"] or 0.0) for lib in ("torch", "onnxruntime")}


def bench_one(name, model, x, y, points, repeats):
    from lossgrid.bench.machine import flops_per_sample
    from lossgrid.config import DirectionSpec, EvalSpec
    from lossgrid.data import EvalData
    from lossgrid.engine.losses import cross_entropy
    from lossgrid.engine.params import perturbed_tensors
    from lossgrid.engine.reference import evaluate_points_reference
    from lossgrid.engine.runners import make_runner
    from lossgrid.kernels import perturb
    from lossgrid.surface.directions import create_directions

    model.eval()
    dirs = create_directions(model, DirectionSpec(), ndim=2)
    base = dirs.layout.flatten(perturbed_tensors(model, "weights"))
    coeffs = torch.linspace(-0.5, 0.5, points)[:, None].repeat(1, 2)
    weights = perturb(base, dirs.flat(), coeffs)
    n = len(x)
    fps = flops_per_sample(model, x)  # lossgrid.bench.machine: counted on one sample
    rows = {}

    def row(seconds):
        return {"seconds": round(seconds, 4), "rate": round(points * n / seconds, 1)}

    data = EvalData(x, y, name)
    fns = {"reference": lambda: evaluate_points_reference(model, dirs.layout, weights, x, y, batch_size=128)}
    runners, setup = {}, {}
    for backend, strategy in RUNNERS:
        label = f"{backend}/{strategy}" if backend != "auto" else "auto"
        t0 = time.perf_counter()
        runners[label] = make_runner(EvalSpec(backend=backend, strategy=strategy), model, dirs.layout, data,
                                     cross_entropy)
        setup[label] = time.perf_counter() - t0
        fns[label] = lambda r=runners[label]: r.evaluate(weights)
    # warm-up (and the auto backend's calibration), then round-robin rounds so that
    # the machine's slow and fast moments spread over all contenders; best of rounds
    outputs = {label: fn() for label, fn in fns.items()}
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for label, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[label] = min(best[label], time.perf_counter() - t0)
    t_ref = best["reference"]
    ref_loss, ref_acc = outputs["reference"]
    rows["reference"] = {**row(t_ref), "ratio": 1.0}
    for label, runner in runners.items():
        t, (loss, acc) = best[label], outputs[label][:2]  # loss, accuracy (then standard errors)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-4)
        info = runner.describe()
        rows[label] = {**row(t), "ratio": round(t_ref / t, 3), "setup_seconds": round(setup[label], 2),
                       "chosen": f"{info['backend']}/{info['strategy']}", "batch_size": info.get("batch_size"),
                       "acc_agreement": float(np.mean(acc == ref_acc))}
        if label == "auto":
            rows[label]["why"] = info.get("backend_choice")
    return {"model": name, "points": points, "samples": n, "params": int(base.numel()),
            "gflop_per_sample": fps / 1e9, "results": rows}


def run(quick: bool, repeats: int) -> dict:
    torch.manual_seed(0)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(),
           "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), "cases": []}
    results = [bench_one(name, model, x, y, points, repeats) for name, model, x, y, points in cases(quick)]
    # the machine's speed drifts: take the best GEMM rate of two measurements, after the cases
    peaks = [matmul_peak(), matmul_peak()]
    out["matmul_peak_gflops"] = {lib: max(p[lib] for p in peaks) for lib in peaks[0]}
    peak = max(out["matmul_peak_gflops"].values())
    print(f"fp32 matmul peak: torch {out['matmul_peak_gflops']['torch']:.0f}, "
          f"onnxruntime {out['matmul_peak_gflops']['onnxruntime']:.0f} GFLOP/s")
    for res in results:
        for r in res["results"].values():
            r["pct_of_peak"] = round(100 * r["rate"] * res["gflop_per_sample"] / peak, 1)
        out["cases"].append(res)
        print(f"\n{res['model']}: {res['points']} points x {res['samples']} samples "
              f"(malloc tuning {'on' if out['glibc_tunables'] else 'off'})")
        for key, r in res["results"].items():
            extra = f" (ran {r['chosen']}, batch {r['batch_size']})" if "chosen" in r else ""
            print(f"  {key:18s} {r['rate']:12,.0f} points x samples/s  {r['ratio']:5.2f}x  "
                  f"{r['pct_of_peak']:5.1f}% of peak{extra}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results.json")
    parser.add_argument("--quick", action="store_true", help="fewer points and samples")
    parser.add_argument("--repeats", type=int, default=5, help="round-robin timing rounds")
    parser.add_argument("--malloc", choices=["on", "off", "both", "inherit"], default="both")
    args = parser.parse_args()
    if args.malloc == "inherit":
        result = run(args.quick, args.repeats)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        return
    from lossgrid.cli import MALLOC_TUNABLES

    settings = ["off", "on"] if args.malloc == "both" else [args.malloc]
    combined = {}
    for setting in settings:
        env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
        if setting == "on":
            env["GLIBC_TUNABLES"] = MALLOC_TUNABLES
        part = f"{args.out}.{setting}"
        cmd = [sys.executable, __file__, "--malloc", "inherit", "--out", part, "--repeats", str(args.repeats)]
        subprocess.run(cmd + (["--quick"] if args.quick else []), env=env, check=True)
        with open(part) as f:
            combined[f"malloc_tuning_{setting}"] = json.load(f)
        os.remove(part)
    with open(args.out, "w") as f:
        json.dump(combined, f, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
