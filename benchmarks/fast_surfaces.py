"""Fast surfaces against the reference method and the exact surface, in one run.

Two cases, both seeded and both on a 21x21 grid on [-1, 1]^2 along the paper's
filter-normalized random directions (one direction file, used by every command):

* ResNet-20 (``lossgrid.zoo:resnet20``) on 2,000 learnable 32x32 RGB images written in
  the CIFAR-10 python-batch format (a per-class colour and texture template plus noise),
  trained briefly by a plain SGD loop in this script so that the surface is a real basin;
* an MLP 784-512-512-10 (``lossgrid.zoo:mlp_mnist``) on 2,000 learnable 784-d samples in
  an ``.npz`` file (a per-class template plus noise), trained briefly the same way.

Every row is a whole command (subprocess; wall clock including start-up; the same
environment for all):

* the reference method: ``benchmarks/reference_method.py run`` for ResNet-20; for the MLP
  ``fast_surfaces.py mlp-reference``, the same method on the ``.npz`` data (directions
  read from the HDF5 file per point, weights set on the module, a DataLoader per point
  with per-sample tensor conversion, batch 128, 2 workers, the whole result arrays
  rewritten per point). Each is first timed on the grid's middle row (21 points); when
  the whole grid would take longer than ``--ref-budget`` seconds it is not run, and its
  time is extrapolated linearly from the row (start-up counted once, per-point cost
  constant), which the report says;
* exact mode: ``lossgrid surface --backend auto`` on all samples at every point -- the
  surface every error is measured against; it is checked against the reference method's
  values where both computed (loss within 1e-4 relative);
* fast modes: ``--samples N/4`` and ``N/8``, with ``--anchor-stride 3`` (and 2),
  ``--adaptive`` with coarse stride 8 and 4, adaptive with ``--samples N/4``,
  ``--target-se E`` (also with anchors) with E a fixed share
  (``--target-se-share``, 0.3%) of the exact surface's loss range, and ``--precision bf16``
  alone and with adaptive where :func:`lossgrid.engine.precision.cpu_bf16` says bf16 is
  native (else recorded as refused, with the reason). All with ``--backend auto``.

Per row: wall seconds, speed-up over the reference method end to end, evaluation
throughput (grid points evaluated x samples / s, from the ``--json`` summary), the
share of this machine's fp32 GEMM peak (measured in the same run), the largest
|fast - exact| over all points (filled ones too) relative to the exact loss range, and
for sampled modes the coverage of the stored 95% intervals (share of evaluated points
with |fast - exact| <= 1.96 * train_loss_se). Targets: a fast mode is at
least 10x the reference method end to end with a maximum error of at most 1% of the
loss range; its intervals cover the exact value at about 95% of points (here: 90-99%).

    python benchmarks/fast_surfaces.py --out-dir benchmarks/baseline
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_ERROR_TARGET = 0.01  # of the exact loss range
SPEEDUP_TARGET = 10.0
#: adaptive grids on anchored subsets (the "combined" group): at least this speed-up by grid size
COMBINED_SPEEDUP_TARGETS = {51: 30.0, 21: 15.0}
COVERAGE_RANGE = (0.90, 0.99)  # "about 95%" of points inside the stated 95% intervals


# -- data and models --------------------------------------------------------------------------
def write_learnable_cifar(directory: str, n: int, seed: int) -> None:
    """CIFAR-10 python batches of ``n`` uint8 images: a per-class template (a colour plus a
    smooth random texture) scaled by a per-image contrast, plus pixel noise; balanced labels."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.RandomState(seed)
    colour = rng.uniform(-1, 1, (10, 3, 1, 1))
    texture = np.kron(rng.normal(0, 1, (10, 3, 8, 8)), np.ones((1, 1, 4, 4)))  # 8x8 blocks -> 32x32
    templates = 35 * colour + 30 * texture
    labels = rng.permutation(np.arange(n) % 10)
    contrast = rng.uniform(0.5, 1.5, (n, 1, 1, 1))
    images = 128 + contrast * templates[labels] + rng.normal(0, 55, (n, 3, 32, 32))
    data = np.clip(np.rint(images), 0, 255).astype(np.uint8).reshape(n, 3072)
    per = n // 5
    for i in range(5):
        batch = {b"data": data[i * per:(i + 1) * per], b"labels": [int(v) for v in labels[i * per:(i + 1) * per]],
                 b"batch_label": b"learnable synthetic"}
        with open(os.path.join(directory, f"data_batch_{i + 1}"), "wb") as fh:
            pickle.dump(batch, fh, protocol=2)


def write_learnable_npz(path: str, n: int, seed: int) -> None:
    """``x`` float32 ``[n, 784]`` (a per-class Gaussian template scaled by a per-sample factor,
    plus unit noise), ``y`` int64 balanced labels."""
    rng = np.random.RandomState(seed)
    templates = rng.normal(0, 1, (10, 784))
    y = rng.permutation(np.arange(n) % 10)
    x = rng.uniform(0.05, 0.25, (n, 1)) * templates[y] + rng.normal(0, 1, (n, 784))
    np.savez(path, x=x.astype(np.float32), y=y.astype(np.int64))


def train(model, x, y, epochs: int, lr: float, seed: int) -> dict:
    """A short SGD loop (momentum 0.9, weight decay 5e-4, batch 128, the rate divided by 10
    for the last quarter of the epochs), then loss and accuracy in eval mode."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = lr * (0.1 if epoch >= 0.75 * epochs else 1.0)
        model.train()
        for idx in torch.randperm(len(y), generator=gen).split(128):
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(b) for b in x.split(500)])
    return {"epochs": epochs, "lr": lr, "seconds": round(time.perf_counter() - t0, 1),
            "train_loss": round(float(loss_fn(out, y)), 4),
            "train_acc": round(100 * float((out.argmax(1) == y).float().mean()), 2)}


# -- the reference method on an .npz set (the MLP case) ---------------------------------------
class NpzSamples:
    """Float rows and labels; per item a tensor made from the row (as a Dataset of the reference code does)."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        import torch

        return torch.from_numpy(np.array(self.x[i], np.float32, copy=True)), int(self.y[i])


def run_mlp_reference(args: argparse.Namespace) -> None:
    """``reference_method.run`` on an ``.npz`` file: the same per-point method, the same JSON line."""
    from reference_method import per_point_surface

    def npz() -> NpzSamples:
        with np.load(args.npz) as f:
            return NpzSamples(f["x"], f["y"])

    per_point_surface(args, npz)


# -- timing whole commands ---------------------------------------------------------------------
def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return wall, r.stdout


def _lossgrid_cli() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "lossgrid")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "lossgrid.cli"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            info = fh.read()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    return name + (", AVX-512" if " avx512f" in info else ", no AVX-512")


#: groups of fast modes ``--without`` can leave out (each costs minutes on the ResNet-20 case)
GROUPS = ("samples", "anchors", "adaptive", "target-se", "bf16", "combined")


def fast_modes(n: int, without: tuple[str, ...] = ()) -> list[tuple[str, list[str]]]:
    quarter, eighth = str(n // 4), str(n // 8)
    groups = {
        "samples": [["--samples", quarter], ["--samples", eighth]],
        "anchors": [["--samples", eighth, "--anchor-stride", "3"], ["--samples", eighth, "--anchor-stride", "2"],
                    ["--samples", quarter, "--anchor-stride", "3"]],
        "adaptive": [["--adaptive", "--adaptive-coarse", "8"], ["--adaptive", "--adaptive-coarse", "4"],
                     ["--adaptive", "--adaptive-coarse", "8", "--samples", quarter]]}
    return [(" ".join(extra), extra) for group, modes in groups.items() if group not in without for extra in modes]


def compare(surf, exact: np.ndarray, loss_range: float) -> dict:
    """Errors of a surface against the exact one, relative to the exact loss range, and the
    coverage of its stated 95% intervals at the evaluated points with a positive standard error."""
    err = np.abs(surf.loss - exact) / loss_range
    done = surf.done.astype(bool)
    filled = surf.extra.get("interpolated", np.zeros(exact.shape)) > 0
    out = {"max_error_of_range": float(np.nanmax(err)) if np.isfinite(err).all() else float("inf"),
           "mean_error_of_range": float(np.mean(err)),
           "max_error_evaluated_of_range": float(np.max(err[done])) if done.any() else None,
           "max_error_filled_of_range": float(np.max(err[filled])) if filled.any() else None,
           "points_filled": int(filled.sum())}
    se = surf.extra.get("train_loss_se")
    population = int(surf.attrs.get("se_population", 0) or 0)
    if se is not None and population > 0:
        use = done & np.isfinite(se) & (se > 0)
        if use.any():
            z = (surf.loss[use] - exact[use]) / se[use]
            out.update(coverage_95=float(np.mean(np.abs(z) <= 1.96)), coverage_points=int(use.sum()),
                       rms_z=float(np.sqrt(np.mean(z ** 2))),
                       median_se_of_range=float(np.median(se[use]) / loss_range))
        use = filled & np.isfinite(se)  # interpolated points' stated intervals (adaptive grids)
        if use.any():
            out.update(coverage_95_interpolated=float(np.mean(np.abs(surf.loss[use] - exact[use]) <= 1.96 * se[use])),
                       coverage_points_interpolated=int(use.sum()))
    return out


def combined_modes(n: int, nx: int, given: list[str] | None) -> list[list[str]]:
    """The adaptive-on-anchors modes of an ``nx`` grid: as given (``"N:options"`` for grid N only), else
    strides 4 and 8 on n/8 samples."""
    if given:
        picked = [g.partition(":") if g.partition(":")[0].isdigit() else ("", "", g) for g in given]
        return [options.split() for grid, _, options in picked if not grid or int(grid) == nx]
    return [["--adaptive", "--anchor-stride", str(k), "--samples", str(n // 8)] for k in (4, 8) if k < nx - 1]


def over_seeds(rows: list[dict]) -> dict:
    """One row for a mode run on several subset seeds: the median wall time, the worst error, the coverage
    of all the seeds' points together; every seed's row under ``seeds``."""
    out = dict(rows[0])
    walls = sorted(r["wall_seconds"] for r in rows)
    median = rows[[r["wall_seconds"] for r in rows].index(walls[len(walls) // 2])]
    for key in ("wall_seconds", "eval_seconds", "points_evaluated", "points_x_samples_per_s", "runner"):
        out[key] = median[key]
    out["max_error_of_range"] = max(r["max_error_of_range"] for r in rows)
    for suffix in ("", "_interpolated"):
        points = [r.get("coverage_points" + suffix, 0) for r in rows]
        if sum(points):
            inside = sum(r["coverage_95" + suffix] * p for r, p in zip(rows, points) if p)
            out["coverage_95" + suffix], out["coverage_points" + suffix] = inside / sum(points), sum(points)
    out["seeds"] = rows
    return out


def reference_row(case: dict, work: str, env: dict[str, str], args: argparse.Namespace, nx: int) -> dict:
    """Time the reference method on the middle row; on the whole grid when that fits the budget."""
    if case["key"] == "resnet20":
        cmd = [sys.executable, os.path.join(HERE, "reference_method.py"), "run", "--cifar", case["data_dir"]]
    else:
        cmd = [sys.executable, os.path.abspath(__file__), "mlp-reference", "--npz", case["npz"]]
    cmd += ["--model", case["model"], "--checkpoint", case["checkpoint"], "--dir-file", case["dirs"],
            "--workers", str(args.workers)]
    row_out = os.path.join(work, f"{case['key']}-{nx}-ref-row.h5")
    wall_row, out = _timed([*cmd, "--x=0:0:1", f"--y=-1:1:{nx}", "--out", row_out], env)
    info = json.loads(out.strip().splitlines()[-1])
    per_point = info["eval_seconds"] / info["points"]
    projected = wall_row + per_point * (nx * nx - info["points"])
    import h5py

    with h5py.File(row_out, "r") as f:
        row_loss, row_acc = f["train_loss"][0], f["train_acc"][0]
    result = {"method": "reference method", "row_wall_seconds": round(wall_row, 2),
              "row_points": info["points"], "row_eval_seconds": round(info["eval_seconds"], 2),
              "setup_seconds": round(info["setup_seconds"], 2), "row_loss": row_loss, "row_acc": row_acc}
    print(f"  reference method, middle row: {wall_row:.1f} s ({per_point:.2f} s per point; whole grid "
          f"projected {projected:.0f} s)", flush=True)
    if projected <= args.ref_budget:
        full_out = os.path.join(work, f"{case['key']}-{nx}-ref.h5")
        wall, out = _timed([*cmd, f"--x=-1:1:{nx}", f"--y=-1:1:{nx}", "--out", full_out], env)
        info = json.loads(out.strip().splitlines()[-1])
        with h5py.File(full_out, "r") as f:
            result.update(full_loss=f["train_loss"][...])
        result.update(wall_seconds=round(wall, 2), eval_seconds=round(info["eval_seconds"], 2),
                      points_evaluated=info["points"], extrapolated=False,
                      how=f"measured on the whole grid ({info['points']} points)")
        print(f"  reference method, whole grid: {wall:.1f} s", flush=True)
    else:
        result.update(wall_seconds=round(projected, 2), eval_seconds=round(per_point * nx * nx, 2),
                      points_evaluated=nx * nx, extrapolated=True,
                      how=(f"EXTRAPOLATED from one row of {info['points']} points (the middle row, x=0): "
                           f"measured {wall_row:.1f} s, start-up counted once, {per_point:.3f} s per point x "
                           f"{nx * nx} points; the whole grid would take > {args.ref_budget:.0f} s"))
    result["points_x_samples_per_s"] = round(result["points_evaluated"] * case["samples"] / result["eval_seconds"], 1)
    return result


def run_case(case: dict, work: str, env: dict[str, str], args: argparse.Namespace, nx: int) -> dict:
    from lossgrid.engine.precision import cpu_bf16
    from lossgrid.surface.file import load_surface

    grid = [f"--x=-1:1:{nx}", f"--y=-1:1:{nx}"]
    base = [*_lossgrid_cli(), "surface", "--model", case["model"], "--checkpoint", case["checkpoint"],
            "--data", case["data_spec"], *grid, "--dir-file", case["dirs"], "--seed", str(args.seed),
            "--backend", "auto", "-q", "--json"]
    print(f"{case['name']}:", flush=True)
    ref = reference_row(case, work, env, args, nx)

    def lossgrid_row(label: str, extra: list[str], seeded: bool = False) -> tuple[dict, object]:
        out_path = os.path.join(work, f"{case['key']}-{nx}-{len(rows)}{'-' + label.split()[-1] if seeded else ''}.h5")
        wall, out = _timed([*base, "--out", out_path, *extra], env)
        s = json.loads(out)
        row = {"method": label, "options": " ".join(extra) or "(none)", "wall_seconds": round(wall, 2),
               "eval_seconds": s["eval_seconds"], "points_evaluated": s["points_computed"], "samples": s["samples"],
               "points_x_samples_per_s": s["points_x_samples_per_s"],
               "runner": f"{s['backend']}/{s['strategy']}", "backend_choice": s.get("backend_choice")}
        for key in ("target_se", "adaptive", "anchors"):
            if key in s:
                row[key] = s[key]
        surf = load_surface(out_path)
        runs = json.loads(surf.attrs.get("runs") or "[]")
        if not s["points_computed"] and runs:  # a complete file of a kept work directory: resumed, not computed
            row.update(computed_earlier=True, eval_seconds=round(sum(r.get("seconds") or 0 for r in runs), 2),
                       points_evaluated=sum(r.get("points") or 0 for r in runs),
                       points_x_samples_per_s=runs[-1].get("points_x_samples_per_s"),
                       runner=f"{runs[-1].get('backend')}/{runs[-1].get('strategy')}")
        check = runs[-1].get("precision_check") if runs else None
        if check:  # the run's own measured error against fp32 (lower precisions)
            row["precision_check"] = check
        print(f"  {label}: {wall:.1f} s, {s['points_computed']} points x {s['samples']} samples "
              f"({row['runner']})", flush=True)
        return row, surf

    rows: list[dict] = []
    exact_row, exact = lossgrid_row("exact (--backend auto)", [])
    rows.append(exact_row)
    exact_loss = exact.loss
    mid = nx // 2
    exact_row["agrees_with_reference_row"] = bool(np.allclose(exact_loss[mid], ref["row_loss"], rtol=1e-4, atol=0))
    exact_row["max_rel_loss_diff_vs_reference"] = float(np.max(np.abs(exact_loss[mid] - ref["row_loss"])
                                                               / np.abs(ref["row_loss"])))
    exact_row["max_acc_diff_vs_reference"] = float(np.max(np.abs(exact.acc[mid] - ref["row_acc"])))
    if "full_loss" in ref:
        exact_row["agrees_with_reference_all"] = bool(np.allclose(exact_loss, ref.pop("full_loss"), rtol=1e-4, atol=0))
    loss_range = float(np.max(exact_loss) - np.min(exact_loss))
    target_se = round(args.target_se_share * loss_range, 6)
    modes = fast_modes(case["samples"], args.without)
    if "target-se" not in args.without:
        modes.append((f"--target-se {target_se:g}", ["--target-se", f"{target_se:g}"]))
        if "anchors" not in args.without:
            modes.append((f"--target-se {target_se:g} --anchor-stride 3",
                          ["--target-se", f"{target_se:g}", "--anchor-stride", "3"]))
    bf16_ok, bf16_why = cpu_bf16()
    eighth = str(case["samples"] // 8)
    bf16_modes = [] if "bf16" in args.without else [
        ("--precision bf16", ["--precision", "bf16"]),
        *([] if "adaptive" in args.without else [("--precision bf16 --adaptive --adaptive-coarse 8",
                                                  ["--precision", "bf16", "--adaptive", "--adaptive-coarse", "8"])]),
        *([] if "anchors" in args.without else [
            (f"--precision bf16 --samples {eighth} --anchor-stride 3",
             ["--precision", "bf16", "--samples", eighth, "--anchor-stride", "3"])])]
    for label, extra in modes + (bf16_modes if bf16_ok else []):
        row, surf = lossgrid_row(label, extra)
        row.update(compare(surf, exact_loss, loss_range))
        rows.append(row)
    if not bf16_ok:
        rows += [{"method": label, "options": " ".join(extra), "refused": bf16_why} for label, extra in bf16_modes]
    for extra in combined_modes(case["samples"], nx, args.combined) if "combined" not in args.without else []:
        label = " ".join(extra)
        per_seed = []
        for seed in range(args.subset_seeds):
            row, surf = lossgrid_row(f"{label} --samples-seed {seed}", [*extra, "--samples-seed", str(seed)], True)
            row.update(compare(surf, exact_loss, loss_range))
            per_seed.append(row)
        rows.append({**over_seeds(per_seed), "method": label, "options": label,
                     "speed_target": COMBINED_SPEEDUP_TARGETS.get(nx, SPEEDUP_TARGET)})
    ref.pop("row_loss")
    ref.pop("row_acc")
    return {"case": case["name"], "model": case["model"], "data": case["data_desc"], "samples": case["samples"],
            "grid": f"{nx}x{nx} on [-1,1]^2", "points": nx * nx, "training": case["training"],
            "flops_per_sample": case["flops_per_sample"], "exact_loss_min": float(np.min(exact_loss)),
            "exact_loss_max": float(np.max(exact_loss)), "exact_loss_range": loss_range,
            "exact_loss_at_origin": float(exact_loss[mid, mid]), "target_se": target_se,
            "target_se_share_of_range": args.target_se_share, "reference": ref, "rows": rows}


def finish(result: dict, peak_tflops: float) -> None:
    """Speed-ups, shares of the peak, and whether each fast mode meets the targets."""
    ref = result["reference"]
    fps = result["flops_per_sample"]
    full = result["points"] * result["samples"]
    ref["speedup_end_to_end"] = 1.0
    ref["percent_of_fp32_gemm_peak"] = round(100 * ref["points_x_samples_per_s"] * fps / 1e12 / peak_tflops, 1)
    for row in result["rows"]:
        if "refused" in row:
            continue
        wall = row["eval_seconds"] if row.get("computed_earlier") else row["wall_seconds"]  # start-up not logged
        row["speedup_end_to_end"] = round(ref["wall_seconds"] / wall, 2)
        row["full_set_points_x_samples_per_wall_s"] = round(full / wall, 1)
        rate = row["points_x_samples_per_s"] or 0.0
        row["percent_of_fp32_gemm_peak"] = round(100 * rate * fps / 1e12 / peak_tflops, 1)
        if "max_error_of_range" not in row:
            continue
        cov = row.get("coverage_95")
        row["meets_speed"] = row["speedup_end_to_end"] >= row.get("speed_target", SPEEDUP_TARGET)
        row["meets_error"] = row["max_error_of_range"] <= MAX_ERROR_TARGET
        row["meets_coverage"] = None if cov is None else bool(COVERAGE_RANGE[0] <= cov <= COVERAGE_RANGE[1])
        row["meets_targets"] = bool(row["meets_speed"] and row["meets_error"] and row["meets_coverage"] is not False)


# -- the report -----------------------------------------------------------------------------------
def _pct(v, digits: int = 2) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}%"


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# Fast surfaces: {report['date']}", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; torch {m['torch']}; "
             f"fp32 GEMM peak measured in this run {m['fp32_gemm_peak_gflops']:.0f} GFLOP/s (torch "
             f"{m['fp32_gemm_peak_torch_gflops']:.0f}, ONNX Runtime "
             f"{m['fp32_gemm_peak_onnxruntime_gflops'] or 0:.0f}); "
             f"bf16: {m['bf16']}. Load average at start/end: {m['loadavg_start']} / {m['loadavg_end']}. "
             f"Total run time {report['total_seconds'] / 60:.1f} min.", "",
             f"Targets: a fast mode is at least {SPEEDUP_TARGET:g}x the reference method end to end with a maximum "
             f"error of at most {100 * MAX_ERROR_TARGET:g}% of the exact surface's loss range, and its stated 95% "
             f"intervals (1.96 x train_loss_se) contain the exact value at {100 * COVERAGE_RANGE[0]:.0f}-"
             f"{100 * COVERAGE_RANGE[1]:.0f}% of the evaluated points.", ""]
    if report.get("groups_left_out"):
        lines += [f"Left out of this run (--without): {', '.join(report['groups_left_out'])}.", ""]
    for case in report["cases"]:
        ref = case["reference"]
        t = case["training"]
        lines += [f"## {case['case']}, {case['grid']}", "",
                  f"{case['data']}; {case['grid']} ({case['points']} points); trained by a short SGD loop "
                  f"({t['epochs']} epochs, {t['seconds']} s): train loss {t['train_loss']}, "
                  f"accuracy {t['train_acc']}%. "
                  f"Exact surface: loss {case['exact_loss_min']:.4g} to {case['exact_loss_max']:.4g} (range "
                  f"{case['exact_loss_range']:.4g}, {case['exact_loss_at_origin']:.4g} at the origin); "
                  f"--target-se E = {100 * case['target_se_share_of_range']:g}% of the range = {case['target_se']:g}. "
                  f"{case['flops_per_sample'] / 1e6:.2f} MFLOP per sample.", "",
                  f"Reference method: {ref['how']}.", "",
                  "| mode | points evaluated | samples | wall s | speed-up (e2e) | points x samples/s | % fp32 peak "
                  "| max error / range | coverage of 95% intervals | targets |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
                  f"| reference method{' (extrapolated)' if ref['extrapolated'] else ''} | {ref['points_evaluated']} "
                  f"| {case['samples']} | {ref['wall_seconds']:.1f} | 1.00x | {ref['points_x_samples_per_s']:,.0f} "
                  f"| {ref['percent_of_fp32_gemm_peak']:.1f}% | - | - | baseline |"]
        for row in case["rows"]:
            if "refused" in row:
                lines.append(f"| `{row['options']}` | refused: {row['refused']} | | | | | | | | |")
                continue
            if "meets_targets" in row:
                cov = row.get("coverage_95")
                verdict = "met" if row["meets_targets"] else "missed (" + ", ".join(
                    w for w, ok in (("speed", row["meets_speed"]), ("error", row["meets_error"]),
                                    ("coverage", row["meets_coverage"] is not False)) if not ok) + ")"
                err, cover = _pct(row["max_error_of_range"]), "-" if cov is None else (
                    f"{_pct(cov, 1)} of {row['coverage_points']}")
                if row.get("coverage_points_interpolated"):
                    cover += (f"; interpolated: {_pct(row['coverage_95_interpolated'], 1)} of "
                              f"{row['coverage_points_interpolated']}")
            else:
                verdict = "agrees with reference" if row.get("agrees_with_reference_row") else "DISAGREES"
                err, cover = "0 (is the reference)", "-"
            mode = f"`{row['options']}`"
            if "seeds" in row:
                mode += (f" ({len(row['seeds'])} subset seeds: median time, worst error, coverage of all; "
                         f"target {row['speed_target']:g}x)")
            if row.get("computed_earlier"):
                mode += (" (computed earlier in the kept work directory, its logged seconds; not a measurement "
                         "where other work ran beside it)")
            wall = row["eval_seconds"] if row.get("computed_earlier") else row["wall_seconds"]
            lines.append(f"| {mode} | {row['points_evaluated']} | {row['samples']} "
                         f"| {wall:.1f} | {row['speedup_end_to_end']:.2f}x "
                         f"| {row['points_x_samples_per_s'] or 0:,.0f} | {row['percent_of_fp32_gemm_peak']:.1f}% "
                         f"| {err} | {cover} | {verdict} |")
        lines.append("")
    lines += ["Notes:", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(lines)


# -- the benchmark --------------------------------------------------------------------------------
def build_cases(work: str, args: argparse.Namespace) -> list[dict]:
    import torch

    from lossgrid.bench.machine import flops_per_sample
    from lossgrid.config import DirectionSpec
    from lossgrid.data import load_data
    from lossgrid.engine.directions import save_directions
    from lossgrid.surface.directions import create_directions
    from lossgrid.zoo import mlp_mnist, resnet20

    cases = []
    specs = [("resnet20", "ResNet-20 (lossgrid.zoo:resnet20) on 32x32 RGB images", "lossgrid.zoo:resnet20", resnet20,
              args.resnet_samples, args.resnet_epochs, 0.05),
             ("mlp", "MLP 784-512-512-10 (lossgrid.zoo:mlp_mnist)", "lossgrid.zoo:mlp_mnist", mlp_mnist,
              args.mlp_samples, args.mlp_epochs, 0.02)]
    for key, name, model_spec, factory, n, epochs, lr in specs:
        if key not in args.cases:
            continue
        case = {"key": key, "name": name, "model": model_spec, "samples": n}
        made = os.path.join(work, f"{key}-case.json")  # a kept work directory's inputs are used again
        reuse = os.path.exists(made)
        if key == "resnet20":
            case["data_dir"] = os.path.join(work, "cifar")
            if not reuse:
                write_learnable_cifar(case["data_dir"], n, args.seed)
            case["data_spec"] = f"cifar10:{case['data_dir']}"
            case["data_desc"] = (f"{n} learnable synthetic 32x32 RGB images in CIFAR-10 python-batch format "
                                 "(per-class colour + 8x8-block texture template, per-image contrast, pixel noise "
                                 "sd 55), reference normalization")
        else:
            case["npz"] = os.path.join(work, "mlp.npz")
            if not reuse:
                write_learnable_npz(case["npz"], n, args.seed)
            case["data_spec"] = f"npz:{case['npz']}"
            case["data_desc"] = (f"{n} learnable synthetic 784-d samples in an .npz (per-class Gaussian template "
                                 "x U(0.05, 0.25) plus unit noise)")
        data = load_data(case["data_spec"])
        torch.manual_seed(args.seed)
        model = factory()
        case["checkpoint"] = os.path.join(work, f"{key}.pt")
        case["dirs"] = os.path.join(work, f"{key}-dirs.h5")
        if reuse:
            with open(made) as fh:
                case["training"] = {**json.load(fh), "reused": True}
            model.load_state_dict(torch.load(case["checkpoint"]))
            print(f"{name}: data, checkpoint and directions of {work} used again", flush=True)
        else:
            case["training"] = train(model, data.x, data.y, epochs, lr, args.seed)
            print(f"{name}: trained {case['training']}", flush=True)
            torch.save(model.state_dict(), case["checkpoint"])
            save_directions(case["dirs"], create_directions(model, DirectionSpec(seed=args.seed), 2))
            with open(made, "w") as fh:
                json.dump(case["training"], fh)
        case["flops_per_sample"] = flops_per_sample(model, data.x)
        cases.append(case)
    return cases


def bench(args: argparse.Namespace) -> dict:
    import torch

    from lossgrid.bench.machine import peak_gemm
    from lossgrid.engine.precision import cpu_bf16

    t_start = time.perf_counter()
    load_start = [round(v, 2) for v in os.getloadavg()]
    work = args.work_dir or tempfile.mkdtemp(prefix="lossgrid-fast-")
    os.makedirs(work, exist_ok=True)
    env = dict(os.environ)
    peaks = [peak_gemm("fp32", torch.device("cpu"))]
    try:
        cases = build_cases(work, args)
        results = [run_case(case, work, env, args, nx) for case in cases for nx in args.grid_points]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    peaks.append(peak_gemm("fp32", torch.device("cpu")))  # the machine drifts: the better of two, before and after
    peak = max(peaks, key=lambda p: p["tflops"])
    bf16 = peak_gemm("bf16", torch.device("cpu"))
    for result in results:
        finish(result, peak["tflops"])
    bf16_ok, bf16_why = cpu_bf16()
    report = {
        "date": datetime.date.today().isoformat(), "quick": args.quick, "seed": args.seed,
        "groups_left_out": list(args.without),
        "machine": {"platform": platform.platform(), "cpu": _cpu_model(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "fp32_gemm_peak_gflops": round(1000 * peak["tflops"], 1),
                    "fp32_gemm_peak_torch_gflops": round(1000 * peak["torch_tflops"], 1),
                    "fp32_gemm_peak_onnxruntime_gflops": round(1000 * (peak["onnxruntime_tflops"] or 0), 1),
                    "fp32_gemm_peaks_gflops_start_end": [round(1000 * p["tflops"], 1) for p in peaks],
                    "bf16_gemm_peak_gflops": round(1000 * bf16["tflops"], 1) if bf16["tflops"] else None,
                    "bf16": ("native: " if bf16_ok else "refused: ") + bf16_why,
                    "loadavg_start": load_start, "loadavg_end": [round(v, 2) for v in os.getloadavg()]},
        "targets": {"speedup_end_to_end_min": SPEEDUP_TARGET, "max_error_of_range_max": MAX_ERROR_TARGET,
                    "coverage_95_range": list(COVERAGE_RANGE)},
        "cases": results, "total_seconds": round(time.perf_counter() - t_start, 1),
        "notes": [
            "Every row is a whole command timed by wall clock (start-up included), run one after the other in the "
            "same environment; every lossgrid row uses --backend auto, the same checkpoint and direction file "
            "(filter-normalized random directions, biases and BN parameters fixed, seed "
            f"{args.seed}).",
            "The data are synthetic but learnable and each model was trained on them (not random labels), so the "
            "surface is a basin whose loss range is far above the sampling noise.",
            "max error / range: max over all grid points (adaptive modes: filled points included) of |fast - exact| "
            "/ (exact max - exact min). coverage: share of the evaluated points with a positive standard error "
            "where |fast - exact| <= 1.96 x train_loss_se (finite-population corrected against the whole set). "
            "Errors of one subset are strongly correlated across points (the same samples at every point), so "
            "coverage on one surface is a few effective draws, not hundreds.",
            "points x samples/s counts the points actually evaluated (an adaptive run's filled points are free) "
            "over the run's evaluation seconds (from the --json summary); % fp32 peak is that times the model's "
            "forward FLOPs per sample over the fp32 GEMM peak measured in this run (bf16 rows too).",
            "--anchor-stride K (with --samples n): every K-th point per axis and the last evaluated on the whole "
            "set, the other points on the subset with those anchors interpolated sample by sample as control "
            "variates (lossgrid.surface.anchors); the anchors' standard error is 0, so coverage counts the others.",
            "Adaptive modes use the default --adaptive-tol 0.01; --target-se E is "
            f"{100 * args.target_se_share:g}% of the exact surface's loss range, fixed before the run (a third of "
            "the 1% error target, so that the largest of ~441 errors of about one standard error stays inside it); "
            "its pilot run is part of its wall time.",
            "--adaptive --anchor-stride K --samples n (adaptive grids on anchored subsets): the anchors are the "
            "adaptive grid's coarse grid, exact on the whole set; every point the grid refines is estimated on the "
            "subset with them as control variates; the rest is interpolated. Each such mode runs on "
            f"{args.subset_seeds} subset seeds (--samples-seed 0..{args.subset_seeds - 1}): the row gives the median "
            "wall time, the worst seed's max error, and the coverage of all seeds' estimated points together; "
            "interpolated points' intervals (their stored train_loss_se: stencil noise plus the change from the "
            "coarser interpolant over 1.96) are counted apart. Speed targets for these rows: "
            + ", ".join(f"{k}x{k}: {v:g}x" for k, v in COMBINED_SPEEDUP_TARGETS.items()) + ".",
            "The reference method runs the reference code's DataLoader with --workers "
            f"{args.workers} worker processes; its per-point cost is constant, so a row of points extrapolates "
            "linearly.",
        ],
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default=os.path.join(HERE, "baseline"))
    parser.add_argument("--quick", action="store_true", help="a smoke-test size (fewer samples, 7x7 grid)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", nargs="+", default=["resnet20", "mlp"], choices=["resnet20", "mlp"])
    parser.add_argument("--workers", type=int, default=2, help="reference method's DataLoader workers")
    parser.add_argument("--ref-budget", type=float, default=480.0,
                        help="seconds: a longer whole-grid reference run is extrapolated from one row")
    parser.add_argument("--target-se-share", type=float, default=0.003, help="--target-se as a share of the range")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (data, checkpoints, surfaces)")
    parser.add_argument("--work-dir", help="the work directory (default: a new temporary one)")
    parser.add_argument("--grid-points", type=int, nargs="+", default=[21], metavar="N",
                        help="grids of N x N points on [-1, 1]^2, one section of the report each")
    parser.add_argument("--combined", nargs="+", metavar="OPTIONS",
                        help='the adaptive-on-anchors modes, each one quoted string of options, "N:options" for '
                        'the N x N grid only (default: "--adaptive --anchor-stride K --samples N/8" for K 4 and 8)')
    parser.add_argument("--subset-seeds", type=int, default=4, metavar="S",
                        help="run each adaptive-on-anchors mode on S subset seeds (--samples-seed 0..S-1)")
    parser.add_argument("--without", nargs="+", default=(), choices=GROUPS,
                        help="leave out these groups of fast modes (the report lists what ran)")
    sub = parser.add_subparsers(dest="command")
    r = sub.add_parser("mlp-reference", help="the reference method on an .npz set (used by the benchmark)")
    r.add_argument("--model", required=True)
    r.add_argument("--checkpoint")
    r.add_argument("--npz", required=True)
    r.add_argument("--x", default="-1:1:21")
    r.add_argument("--y", default="-1:1:21")
    r.add_argument("--dir-file", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--batch-size", type=int, default=128)
    r.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.command == "mlp-reference":
        run_mlp_reference(args)
        return
    if args.quick:
        args.grid_points = [7]
    args.resnet_samples, args.mlp_samples = (200, 400) if args.quick else (2000, 2000)
    args.resnet_epochs, args.mlp_epochs = (2, 5) if args.quick else (5, 10)
    if args.quick:
        args.ref_budget = min(args.ref_budget, 15.0)
    report = bench(args)
    write_report(os.path.join(args.out_dir, f"fast-surfaces{'-quick' if args.quick else ''}-{report['date']}"),
                 report, markdown(report))


def write_report(stem: str, report: dict, text: str) -> None:
    """``stem.json`` (the report) and ``stem.md`` (its text), printed too."""
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    with open(stem + ".json", "w") as fh:
        json.dump(report, fh, indent=2)
        fh.write("\n")
    with open(stem + ".md", "w") as fh:
        fh.write(text)
    print(text)
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
