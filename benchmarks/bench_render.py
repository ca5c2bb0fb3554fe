"""Rendering time of every plot kind for a 101x101 surface (target: under 5 s each).

    python benchmarks/bench_render.py --out benchmarks/render.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np


def synthetic_surface(n: int = 101):
    from lossgrid.surface.file import Surface

    x = np.linspace(-1, 1, n)
    X, Y = np.meshgrid(x, x, indexing="ij")
    loss = 0.02 + 3 * X**2 + 5 * Y**2 + 0.3 * np.sin(6 * X) * np.cos(5 * Y) ** 2
    acc = 100 * np.exp(-loss)
    attrs = {"xnorm": "filter", "ynorm": "filter", "samples": 1000, "data": "synthetic", "directions": "d"}
    return Surface(x, x, loss, acc, np.ones(loss.shape, bool), attrs, "synthetic.h5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/render.json")
    parser.add_argument("--n", type=int, default=101)
    args = parser.parse_args()
    from lossgrid.plot import plot_surfaces

    surf = synthetic_surface(args.n)
    one_d = synthetic_surface(args.n)
    one_d.ycoordinates, one_d.loss, one_d.acc, one_d.done = None, surf.loss[:, 50], surf.acc[:, 50], surf.done[:, 50]
    jobs = [("curve", [one_d], "curve.png", {}), ("contour", [surf], "contour.png", {}),
            ("contourf", [surf], "contourf.png", {}), ("heatmap", [surf], "heatmap.png", {}),
            ("surface3d", [surf], "surface3d.png", {}), ("html", [surf], "surface.html", {}),
            ("vtk", [surf], "surface.vts", {}), ("vtk", [surf], "surface.vtp", {"upsample": 201}),
            ("compare", [surf, surf], "compare.png", {})]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, surfaces, name, kw in jobs:
            t0 = time.perf_counter()
            plot_surfaces(surfaces, os.path.join(tmp, name), kind=kind, **kw)
            dt = time.perf_counter() - t0
            results.append({"kind": kind, "file": name, "seconds": round(dt, 3), "under_5s": dt < 5.0, **kw})
            print(f"{kind:10s} {name:14s} {dt:6.2f} s  {'ok' if dt < 5 else 'SLOW'}")
    with open(args.out, "w") as f:
        json.dump({"grid": [args.n, args.n], "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
