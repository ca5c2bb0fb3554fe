"""Top-3 eigenvalues and the trace of ResNet-20's Hessian: lossgrid against PyHessian 0.1, in one run.

The model is ``lossgrid.zoo:resnet20`` trained briefly (the fast-surfaces recipe) on 512 learnable
synthetic 32x32 RGB images; both tools compute the Hessian of the mean cross-entropy over all 512
images in eval mode, on this machine's CPU threads.

* PyHessian 0.1 at its defaults (``eigenvalues(top_n=3)``: power iteration with deflation, ``maxIter
  100, tol 1e-3`` per eigenvalue; ``trace()``: Hutchinson, ``maxIter 100, tol 1e-3``), given the 512
  images as one batch (``data=``: its fastest mode, the gradient graph built once and reused by every
  product); its products are counted by wrapping its ``hessian_vector_product``.
* lossgrid ``top_eigs_and_trace`` (``lossgrid hessian --top-k 3 --trace``): Lanczos until the top-3
  residual bounds are below ``--eig-tol`` of the largest eigenvalue, the Lanczos basis as Hutch++'s
  low-rank part, probes until the trace's standard error is ``--trace-rse`` of it.

Cost is counted in products and in forward+backward units: each tool's compute seconds over the
seconds of one forward+backward pass (the gradient of the mean loss) over the same 512 images, timed
in this run. Accuracy: every eigenpair's relative residual ``||Hv - lambda v|| / |lambda|`` measured
with lossgrid's exact product (outside the timings), the trace's standard error (PyHessian's: the
spread of its samples over sqrt(n)).

    python benchmarks/hessian_pyhessian.py --out-dir benchmarks/baseline
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _model_and_data(work: str, images: int, seed: int):
    """ResNet-20 trained as the fast-surfaces benchmark trains it (2,000 images: on 512 alone its recipe
    diverges), and the first ``images`` of its training set."""
    import torch
    from fast_surfaces import train, write_learnable_cifar

    from lossgrid.data import as_eval_data, load_data
    from lossgrid.zoo import resnet20

    write_learnable_cifar(os.path.join(work, "cifar"), max(images, 2000), seed)
    data = load_data(f"cifar10:{os.path.join(work, 'cifar')}")
    torch.manual_seed(seed)
    model = resnet20()
    training = train(model, data.x, data.y, 5, 0.05, seed)
    return model.eval(), as_eval_data((data.x[:images], data.y[:images])), training


def _unit_seconds(op, repeats: int = 3) -> float:
    """Seconds of one forward+backward pass over the set (the median of ``repeats``)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        op.gradient()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _relative_residuals(op, values, vectors) -> list[float]:

    out = []
    for lam, v in zip(values, vectors):
        v = v / v.norm()
        out.append(float((op.matvec(v) - lam * v).norm() / abs(lam)))
    return out


def run_pyhessian(model, data, op) -> dict:
    import torch

    try:
        import importlib

        ph = importlib.import_module("pyhessian.hessian")  # the module (the package's attribute is the class)
    except ImportError:
        raise SystemExit("PyHessian is not installed: pip install -c constraints.txt 'pyhessian==0.1'") from None
    count = {"products": 0}
    plain = ph.hessian_vector_product

    def counted(*args):
        count["products"] += 1
        return plain(*args)

    ph.hessian_vector_product = counted
    torch.manual_seed(0)
    t0 = time.perf_counter()
    h = ph.hessian(model, torch.nn.CrossEntropyLoss(), data=(data.x, data.y), cuda=False)
    setup = time.perf_counter() - t0
    values, vectors = h.eigenvalues(top_n=3)
    eig_products = count["products"]
    samples = h.trace()
    seconds = time.perf_counter() - t0
    ph.hessian_vector_product = plain
    flat = [torch.cat([p.reshape(-1) for p in v]).to(torch.float64) for v in vectors]
    trace = float(np.mean(samples))
    return {"tool": "PyHessian 0.1 (defaults; one batch of all images, graph reused)", "seconds": round(seconds, 2),
            "setup_seconds": round(setup, 2), "products": count["products"], "eigen_products": eig_products,
            "trace_products": count["products"] - eig_products, "top3": [float(v) for v in values],
            "relative_residuals": _relative_residuals(op, values, flat), "trace": trace,
            "trace_stderr": float(np.std(samples, ddof=1) / np.sqrt(len(samples))) if len(samples) > 1 else None,
            "trace_samples": len(samples)}


def run_lossgrid(op, args, max_probes: int, label: str) -> dict:
    from lossgrid.hessian.operator import top_eigs_and_trace

    before = op.hvp_count  # a fresh operator: building its kept graphs is part of the time
    t0 = time.perf_counter()
    eig, trace = top_eigs_and_trace(op, 3, max_probes, args.trace_rse, seed=0, tol=args.eig_tol)
    seconds = time.perf_counter() - t0
    products = op.hvp_count - before
    return {"tool": f"lossgrid, {label} (eig-tol {args.eig_tol:g}, trace-rse {args.trace_rse:g}, at most "
                    f"{max_probes} probes, batch {args.batch_size})", "seconds": round(seconds, 2),
            "products": products,
            "lanczos_steps": eig.iterations, "residual_products": 3, "trace_products": trace.samples,
            "top3": eig.values.tolist(), "relative_residuals": _relative_residuals(op, eig.values, eig.vectors),
            "trace": trace.value, "trace_stderr": trace.stderr, "trace_samples": trace.samples,
            "trace_method": trace.method, "product_mode": op.mode}


def product_cost(op, repeats: int = 1) -> dict:
    """Seconds of one lossgrid product from kept graphs (the default; built by the first, not timed),
    reverse-over-reverse and forward-over-reverse."""
    import torch

    v = torch.randn(op.size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = {}
    t0 = time.perf_counter()
    op.matvec(v)  # builds the kept graphs
    out["graph_build_and_first"] = time.perf_counter() - t0
    for mode in ("graph", "vjp", "jvp"):
        op.mode = mode
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            op.matvec(v)
            times.append(time.perf_counter() - t0)
        out[mode] = float(np.median(times))
    op.mode = "graph"
    return out


def markdown(r: dict) -> str:
    unit = r["unit_seconds"]
    lines = [f"# Hessian top-3 and trace: lossgrid against PyHessian 0.1 ({r['date']})", "",
             f"Machine: {r['machine']}; torch {r['torch']}, {r['threads']} threads. ResNet-20 "
             f"({r['parameters']:,} parameters) trained briefly on 2,000 learnable synthetic 32x32 images "
             f"(train loss {r['training']['train_loss']}, accuracy {r['training']['train_acc']}%), the Hessian over "
             f"the first {r['images']} of them. One "
             f"forward+backward pass over the {r['images']} images (batches of {r['batch_size']}): "
             f"{unit:.2f} s, the unit below. Load average at start/end: {r['loadavg_start']} / {r['loadavg_end']}.", "",
             "| tool | seconds | products | fwd+bwd units | top-3 eigenvalues | relative residuals | trace +- se "
             "(samples) |", "| --- | ---: | ---: | ---: | --- | --- | --- |"]
    for row in (r["pyhessian"], *r["lossgrid"]):
        se = "-" if row["trace_stderr"] is None else f"{row['trace_stderr']:.3g}"
        lines.append(f"| {row['tool']} | {row['seconds']:.1f} | {row['products']} | {row['seconds'] / unit:.0f} "
                     f"| {', '.join(f'{v:.4g}' for v in row['top3'])} "
                     f"| {', '.join(f'{e:.1e}' for e in row['relative_residuals'])} "
                     f"| {row['trace']:.4g} +- {se} ({row['trace_samples']}) |")
    c = r["product_seconds"]
    lines.append("")
    for row in r["lossgrid"]:
        lines += [f"- {row['tool']}: {row['seconds'] / r['pyhessian']['seconds']:.2f} of PyHessian's time "
                  f"({row['seconds'] / unit:.0f} against {r['pyhessian']['seconds'] / unit:.0f} fwd+bwd units; "
                  f"target: at most half), top-3 relative residuals at most {max(row['relative_residuals']):.1e} "
                  f"(target 1e-4), the trace's standard error {100 * row['trace_stderr'] / abs(row['trace']):.1f}% of "
                  f"it (target 10%) from {row['lanczos_steps']} Lanczos vectors and {row['trace_samples']} probes."]
    lines += ["",
              f"One lossgrid product costs {c['graph'] / unit:.2f} units from the kept gradient graphs (its default "
              f"when they fit in memory: one backward pass through each batch's graph; building them cost "
              f"{r['graph_build_seconds'] / unit:.2f} units once), {c['vjp'] / unit:.2f} units reverse-over-reverse "
              f"(a forward pass, the gradient's backward with its graph, and that graph's backward) and "
              f"{c['jvp'] / unit:.2f} units forward-over-reverse; PyHessian's "
              f"{r['pyhessian_product_seconds'] / unit:.2f} units (its graph built once, so only the second backward "
              "per product).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default=os.path.join(HERE, "baseline"))
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eig-tol", type=float, default=1e-4)
    parser.add_argument("--trace-rse", type=float, default=0.1)
    parser.add_argument("--trace-samples", type=int, default=64, help="most probes of the row to the target")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import torch

    from lossgrid.hessian.operator import hessian_operator

    load_start = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="lossgrid-hessian-") as work:
        model, data, training = _model_and_data(work, args.images, args.seed)
        op = hessian_operator(model, data, batch_size=args.batch_size)
        unit = _unit_seconds(op)
        costs = product_cost(op)
        pyhessian_row = run_pyhessian(model, data, op)
        target = run_lossgrid(hessian_operator(model, data, batch_size=args.batch_size), args, args.trace_samples,
                              "to the trace target")
        # within half of PyHessian's time: the probes left after the same (seeded) Lanczos run and its residuals
        per = costs["graph"]
        half = 0.5 * pyhessian_row["seconds"] / per - target["lanczos_steps"] - 3 - costs["graph_build_and_first"] / per
        lossgrid_rows = [run_lossgrid(hessian_operator(model, data, batch_size=args.batch_size), args,
                                      max(8, int(half)), "within half of PyHessian's time"), target]
    report = {"date": datetime.date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores", "torch": torch.__version__, "threads": torch.get_num_threads(),
              "images": args.images, "batch_size": args.batch_size, "parameters": op.size, "training": training,
              "unit_seconds": unit, "product_seconds": costs,
              "graph_build_seconds": costs["graph_build_and_first"] - costs["graph"],
              "pyhessian_product_seconds": pyhessian_row["seconds"] / max(pyhessian_row["products"], 1),
              "lossgrid": lossgrid_rows, "pyhessian": pyhessian_row, "loadavg_start": load_start,
              "loadavg_end": [round(v, 2) for v in os.getloadavg()]}
    from fast_surfaces import write_report

    write_report(os.path.join(args.out_dir, f"hessian-pyhessian-{report['date']}"), report, markdown(report))


if __name__ == "__main__":
    main()
