"""Surface throughput: the torch runner against the plain per-point loop, in one run.

For each model the same grid points are evaluated by
  * ``reference``: the plain per-point PyTorch loop (load_state_dict, forward in
    batches, average) -- what the reference implementation does per point, minus
    its disk and DataLoader overheads;
  * the torch runner with ``loop``, ``vmap`` and ``auto`` strategies;
then results are checked to agree (loss 1e-5 relative) and throughput is reported
as grid points x samples per second and as a ratio to the reference.

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


def cases(quick: bool):
    from lossgrid.data import load_data
    from lossgrid.zoo import mlp_mnist, resnet20, resnet_digits

    gen = torch.Generator().manual_seed(0)
    digits = load_data("digits:train")
    n_r20 = 256 if quick else 512
    yield "resnet_digits (demo CNN, 8x8 digits)", resnet_digits(), digits.x, digits.y, 8 if quick else 16
    yield ("resnet20 (32x32 RGB)", resnet20(), torch.randn(n_r20, 3, 32, 32, generator=gen),
           torch.randint(0, 10, (n_r20,), generator=gen), 2 if quick else 4)
    yield ("mlp 784-512-512-10", mlp_mnist(), torch.randn(2048, 784, generator=gen),
           torch.randint(0, 10, (2048,), generator=gen), 8 if quick else 16)


def bench_one(name, model, x, y, points, repeats):
    from lossgrid.config import DirectionSpec
    from lossgrid.engine.directions import create_directions
    from lossgrid.engine.losses import cross_entropy
    from lossgrid.engine.params import perturbed_tensors
    from lossgrid.engine.reference import evaluate_points_reference
    from lossgrid.engine.runners import TorchRunner
    from lossgrid.kernels import perturb

    model.eval()
    dirs = create_directions(model, DirectionSpec(), ndim=2)
    base = dirs.layout.flatten(perturbed_tensors(model, "weights"))
    coeffs = torch.linspace(-0.5, 0.5, points)[:, None].repeat(1, 2)
    weights = perturb(base, dirs.flat(), coeffs)
    n = len(x)
    rows = {}

    def timed(fn):
        fn_out = fn()  # warm-up (and calibration for auto)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn_out = fn()
            best = min(best, time.perf_counter() - t0)
        return best, fn_out

    t_ref, (ref_loss, ref_acc) = timed(lambda: evaluate_points_reference(model, dirs.layout, weights, x, y,
                                                                         batch_size=128))
    rows["reference"] = {"seconds": t_ref, "rate": points * n / t_ref}
    for strategy in ("loop", "vmap", "auto"):
        runner = TorchRunner(model, dirs.layout, x, y, cross_entropy, strategy=strategy)
        t, (loss, acc) = timed(lambda r=runner: r.evaluate(weights))
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
        agree = float(np.mean(acc == ref_acc))
        rows[f"torch/{strategy}"] = {"seconds": t, "rate": points * n / t, "ratio": t_ref / t,
                                     "chosen": runner.strategy, "batch_size": runner.batch_size,
                                     "acc_agreement": agree}
    return {"model": name, "points": points, "samples": n, "params": int(base.numel()), "results": rows}


def run(quick: bool, repeats: int) -> dict:
    torch.manual_seed(0)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(),
           "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), "cases": []}
    for name, model, x, y, points in cases(quick):
        res = bench_one(name, model, x, y, points, repeats)
        out["cases"].append(res)
        print(f"\n{name}: {res['points']} points x {res['samples']} samples "
              f"(malloc tuning {'on' if out['glibc_tunables'] else 'off'})")
        for key, row in res["results"].items():
            ratio = f"{row.get('ratio', 1.0):5.2f}x"
            extra = f" (chose {row['chosen']}, batch {row['batch_size']})" if "chosen" in row else ""
            print(f"  {key:14s} {row['rate']:12,.0f} points x samples/s  {ratio}{extra}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results.json")
    parser.add_argument("--quick", action="store_true", help="fewer points and samples")
    parser.add_argument("--repeats", type=int, default=2)
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
