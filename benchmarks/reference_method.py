"""The reference implementation's method, as the baseline users compare against,
and a benchmark of lossgrid against it on its own kind of job.

``run`` computes a surface the way the reference code (tomgoldstein/loss-landscape)
does, written by us from its description: the CIFAR-10 batches are loaded as
uint8 images; per grid point the directions are read from the HDF5 direction
file, the perturbed weights (theta + x*dx + y*dy) are set on the module tensor by
tensor, a DataLoader with worker processes and per-image ToTensor/Normalize
transforms (PIL image -> float32 / 255 -> (x - mean) / std) is created and run
through the model in batches of 128, and the whole loss and accuracy arrays are
rewritten in the surface file.

``bench`` writes CIFAR-format data (random uint8 images, random labels) of each
size, a ResNet-20 checkpoint and a direction file, then times, as whole commands
(start-up included), the reference method and ``lossgrid surface`` (default,
``--backend auto`` and every single strategy that ``auto`` may choose), checks
that every surface agrees with the reference method's (loss 1e-4 relative,
accuracy equal), and reports wall times, evaluation throughput (grid points x
images per second) and the share of this machine's fp32 GEMM peak, measured in
the same run::

    python benchmarks/reference_method.py bench --images 2000 10000 --grid=-1:1:5 \\
        --out benchmarks/results-reference.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)  # the reference code's CIFAR-10 constants
STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
RESNET20_MACS = 40.8e6  # multiply-adds per 32x32 image (the usual count for ResNet-20), 2 FLOP each


# -- the reference method -----------------------------------------------------------------
class CifarImages:
    """uint8 HWC images and labels; per item a PIL image, ToTensor and Normalize (as torchvision does)."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images_hwc, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        import torch
        from PIL import Image

        img = Image.fromarray(self.images[i])
        t = torch.from_numpy(np.array(img, np.uint8, copy=True)).permute(2, 0, 1).contiguous().float().div(255)
        mean = torch.as_tensor(MEAN, dtype=t.dtype)[:, None, None]
        std = torch.as_tensor(STD, dtype=t.dtype)[:, None, None]
        return t.sub(mean).div(std), int(self.labels[i])


def load_cifar_hwc(directory: str) -> tuple[np.ndarray, np.ndarray]:
    """The training batches as uint8 ``[N, 32, 32, 3]`` (as torchvision's CIFAR10 keeps them)."""
    from lossgrid.data import read_cifar_batch

    parts = [read_cifar_batch(os.path.join(directory, f"data_batch_{i}")) for i in range(1, 6)]
    data = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(data), np.concatenate([p[1] for p in parts])


def run_reference(args: argparse.Namespace) -> None:
    per_point_surface(args, lambda: CifarImages(*load_cifar_hwc(args.cifar)))


def per_point_surface(args: argparse.Namespace, make_dataset) -> None:
    """The reference method on the Dataset ``make_dataset()`` returns (loaded after the model, as
    the reference does): per point, read the directions, set the weights, a DataLoader over the
    set; prints one JSON line with the evaluation and set-up seconds."""
    import h5py
    import torch

    from lossgrid.config import GridSpec
    from lossgrid.models import load_model

    t_start = time.perf_counter()
    net, _ = load_model(args.model, args.checkpoint)
    net.eval()
    dataset = make_dataset()
    grid = GridSpec.parse(args.x, args.y)
    xs, ys = grid.x.coordinates(), grid.y.coordinates()
    origin = [p.data.clone() for p in net.parameters()]
    losses, accs = -np.ones((len(xs), len(ys))), -np.ones((len(xs), len(ys)))
    with h5py.File(args.out, "w") as f:
        f["xcoordinates"], f["ycoordinates"] = xs, ys
        f["train_loss"], f["train_acc"] = losses, accs
    criterion = torch.nn.CrossEntropyLoss()
    t_eval = time.perf_counter()
    for ix, iy in np.ndindex(len(xs), len(ys)):
        with h5py.File(args.dir_file, "r") as f:  # per point, as the reference does
            dx = [torch.from_numpy(f["xdirection"][str(i)][...]) for i in range(len(origin))]
            dy = [torch.from_numpy(f["ydirection"][str(i)][...]) for i in range(len(origin))]
        for p, w, a, b in zip(net.parameters(), origin, dx, dy):
            p.data = w + a.to(w.dtype) * xs[ix] + b.to(w.dtype) * ys[iy]
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=False,
                                             num_workers=args.workers)
        total, correct, n = 0.0, 0, 0
        with torch.no_grad():
            for inputs, targets in loader:
                outputs = net(inputs)
                total += criterion(outputs, targets).item() * len(targets)
                correct += int((outputs.argmax(1) == targets).sum())
                n += len(targets)
        losses[ix, iy], accs[ix, iy] = total / n, 100.0 * correct / n
        with h5py.File(args.out, "r+") as f:  # the whole arrays, every point
            f["train_loss"][:] = losses
            f["train_acc"][:] = accs
    t_end = time.perf_counter()
    print(json.dumps({"points": grid.x.num * grid.y.num, "samples": len(dataset), "eval_seconds": t_end - t_eval,
                      "setup_seconds": t_eval - t_start}))


# -- the benchmark ---------------------------------------------------------------------------
def write_cifar(directory: str, n: int, seed: int = 0) -> None:
    import pickle

    os.makedirs(directory, exist_ok=True)
    rng = np.random.RandomState(seed)
    per = n // 5
    for i in range(1, 6):
        batch = {b"data": rng.randint(0, 256, (per, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.randint(0, 10, per)], b"batch_label": b"synthetic"}
        with open(os.path.join(directory, f"data_batch_{i}"), "wb") as fh:
            pickle.dump(batch, fh, protocol=2)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            info = fh.read()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    return name + (", AVX-512" if " avx512f" in info else ", no AVX-512")


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return wall, r.stdout


def bench(args: argparse.Namespace) -> None:
    import torch
    from bench_surface import matmul_peak  # noqa: PLC0415 - a sibling script

    from lossgrid.config import DirectionSpec
    from lossgrid.engine.directions import save_directions
    from lossgrid.surface.directions import create_directions
    from lossgrid.surface.file import load_surface
    from lossgrid.zoo import resnet20

    work = tempfile.mkdtemp(prefix="lossgrid-refbench-")
    torch.manual_seed(0)
    model = resnet20().eval()
    ckpt = os.path.join(work, "resnet20.pt")
    torch.save(model.state_dict(), ckpt)
    dirs = os.path.join(work, "dirs.h5")
    save_directions(dirs, create_directions(model, DirectionSpec(seed=0), 2))
    env = dict(os.environ)
    lossgrid_cli = [sys.executable, "-m", "lossgrid.cli"]
    peak = matmul_peak()
    report = {"machine": {"platform": platform.platform(), "cpu": _cpu_model(),
                          "cpus": os.cpu_count(), "torch": torch.__version__,
                          "fp32_gemm_peak_gflops": peak}, "grid": [args.x, args.y], "cases": []}
    variants = [("lossgrid default", []), ("lossgrid --backend auto", ["--backend", "auto"]),
                ("lossgrid torch/loop", ["--strategy", "loop"]),
                ("lossgrid onnxruntime/baked", ["--backend", "onnxruntime", "--strategy", "baked"])]
    if args.all_strategies:
        variants += [("lossgrid torch/vmap", ["--strategy", "vmap"]), ("lossgrid torch/wide", ["--strategy", "wide"]),
                     ("lossgrid onnxruntime/wide", ["--backend", "onnxruntime", "--strategy", "wide"])]
    best_peak = max(peak.values())
    for n in args.images:
        data = os.path.join(work, f"cifar{n}")
        write_cifar(data, n)
        grid = [f"--x={args.x}", f"--y={args.y}"]
        ref_out = os.path.join(work, f"ref{n}.h5")
        wall, out = _timed([sys.executable, __file__, "run", "--model", "lossgrid.zoo:resnet20", "--checkpoint", ckpt,
                            "--cifar", data, *grid, "--dir-file", dirs, "--out", ref_out,
                            "--workers", str(args.workers)], env)
        ref = json.loads(out.strip().splitlines()[-1])
        points = ref["points"]
        rows = [{"method": "reference method", "wall_seconds": round(wall, 2),
                 "eval_seconds": round(ref["eval_seconds"], 2),
                 "points_x_samples_per_s": round(points * n / ref["eval_seconds"], 1)}]
        ref_loss = np.asarray(__import__("h5py").File(ref_out, "r")["train_loss"][...])
        print(f"{n} images: reference method {wall:.1f} s", flush=True)
        for name, extra in variants:
            out_path = os.path.join(work, f"{name.replace(' ', '_').replace('/', '_')}{n}.h5")
            wall, out = _timed([*lossgrid_cli, "surface", "--model", "lossgrid.zoo:resnet20", "--checkpoint", ckpt,
                                "--data", f"cifar10:{data}", *grid, "--dir-file", dirs, "--out", out_path, "-q",
                                "--json", *extra], env)
            summary = json.loads(out)
            surf = load_surface(out_path)
            agree = bool(np.allclose(surf.loss, ref_loss, rtol=1e-4, atol=0))
            rate = summary["points_x_samples_per_s"]
            rows.append({"method": name, "wall_seconds": round(wall, 2), "eval_seconds": summary["eval_seconds"],
                         "points_x_samples_per_s": rate, "strategy": f"{summary['backend']}/{summary['strategy']}",
                         "choice": summary.get("backend_choice") or summary.get("strategy_reason"),
                         "agrees_with_reference": agree,
                         "percent_of_gemm_peak": round(100 * rate * 2 * RESNET20_MACS / 1e9 / best_peak, 1)})
            print(f"{n} images: {name} {wall:.1f} s ({summary['backend']}/{summary['strategy']})", flush=True)
        base = rows[0]["wall_seconds"]
        for row in rows:
            row["speedup_end_to_end"] = round(base / row["wall_seconds"], 2)
            row["speedup_eval"] = round(row["points_x_samples_per_s"] / rows[0]["points_x_samples_per_s"], 2)
        singles = [r for r in rows[1:] if r["method"] not in ("lossgrid default", "lossgrid --backend auto")]
        best = min(r["wall_seconds"] for r in singles)
        auto = next(r for r in rows if r["method"] == "lossgrid --backend auto")
        default = next(r for r in rows if r["method"] == "lossgrid default")
        report["cases"].append({"images": n, "points": points, "rows": rows,
                                "auto_vs_best_single": round(auto["wall_seconds"] / best, 3),
                                "auto_vs_default": round(auto["wall_seconds"] / default["wall_seconds"], 3)})
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="compute a surface with the reference method")
    r.add_argument("--model", required=True)
    r.add_argument("--checkpoint")
    r.add_argument("--cifar", required=True, help="directory of CIFAR-10 python batches")
    r.add_argument("--x", default="-1:1:5")
    r.add_argument("--y", default="-1:1:5")
    r.add_argument("--dir-file", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--batch-size", type=int, default=128)
    r.add_argument("--workers", type=int, default=2)
    b = sub.add_parser("bench", help="time the reference method against lossgrid")
    b.add_argument("--images", type=int, nargs="+", default=[2000, 10000])
    b.add_argument("--x", default="-1:1:5")
    b.add_argument("--y", default="-1:1:5")
    b.add_argument("--workers", type=int, default=2)
    b.add_argument("--all-strategies", action="store_true", help="also time vmap, torch/wide and onnxruntime/wide")
    b.add_argument("--out")
    args = parser.parse_args()
    if args.command == "run":
        run_reference(args)
    else:
        sys.path.insert(0, HERE)
        bench(args)


if __name__ == "__main__":
    main()
