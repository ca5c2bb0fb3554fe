"""Every kind of picture, from real runs, into docs/img (`make screenshots`).

Runs lossgrid's own commands as a user would, on scikit-learn's digits and the demo's residual CNN: the
demo (a 2D surface), its training path (a checkpoint per epoch and their PCA plane), a 1D line, an
interpolation from the initial to the trained weights, two checkpoints on shared directions (compare), a
convexity map (--curvature) and an evolution. Each kind is drawn as its PNG (`lossgrid plot`) and as its
HTML page, which headless Chromium (scripts/browser.py) opens at 1280x800 and photographs; a page with
any problem (console error, network request, overlap, blank panel) stops the script. Images are saved
with a 256-colour palette to keep the repository small. About 5 minutes on 2 cores.

    python scripts/screenshots.py --out docs/img [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import browser  # noqa: E402 - scripts/browser.py

MODEL = "lossgrid.zoo:resnet_digits"
DATA = "digits:train"
WINDOW = (1280, 800)


def lossgrid(*args: str) -> None:
    """Run one lossgrid command; its failure stops the script with its output."""
    command = [os.path.join(os.path.dirname(sys.executable), "lossgrid"), *args]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True)


def compute(work: str) -> None:
    """The runs every picture is drawn from, into ``work``."""
    demo, path = os.path.join(work, "demo"), os.path.join(work, "trajectory")
    lossgrid("demo", "--out", demo, "--overwrite", "-q")
    lossgrid("demo", "--trajectory", "--out", path, "--overwrite", "-q")
    checkpoint = os.path.join(demo, "model.pt")
    ckpts = os.path.join(path, "checkpoints")
    first, middle, last = (os.path.join(ckpts, f"epoch_{e:04d}.pt") for e in (0, 3, 12))
    base = ["--model", MODEL, "--data", DATA, "-q", "--overwrite"]
    at = os.path.join(work, "{}.h5").format
    lossgrid("surface", *base, "--checkpoint", checkpoint, "--x=-1:1:51", "--out", at("line"))
    # --dir-type states: BatchNorm's running statistics move along too, so that x=1 is the trained model itself
    lossgrid("surface", *base, "--checkpoint", first, "--model2", last, "--dir-type", "states",
             "--x=-0.25:1.25:41", "--out", at("interpolation"))
    dirs = os.path.join(work, "dirs.h5")
    for name, ckpt in (("epoch_3", middle), ("epoch_12", last)):
        lossgrid("surface", *base, "--checkpoint", ckpt, "--dir-file", dirs, "--x=-1:1:31", "--y=-1:1:31",
                 "--out", at(name))
    lossgrid("surface", *base, "--checkpoint", checkpoint, "--curvature", "--samples", "300", "--x=-1:1:9",
             "--y=-1:1:9", "--out", at("curvature"))
    lossgrid("evolve", "--model", MODEL, "--data", DATA, "--checkpoints", os.path.join(ckpts, "epoch_*.pt"),
             "--samples", "500", "--x=-1:1:21", "--y=-1:1:21", "--out", at("evolution"), "--html",
             os.path.join(work, "evolution.html"), "--gif", os.path.join(work, "evolution.gif"), "-q")


def kinds(work: str) -> dict[str, list[str]]:
    """Per kind, the arguments of its `lossgrid plot` on the runs in ``work``."""
    at = os.path.join(work, "{}.h5").format
    path = os.path.join(work, "trajectory")
    surface = os.path.join(work, "demo", "surface.h5")
    trajectory = ["--trajectory", os.path.join(path, "trajectory.h5"), "--model", MODEL, "--data", DATA]
    return {"surface": [surface], "surface3d": [surface, "--kind", "surface3d"], "curve": [at("line")],
            "interpolation": [at("interpolation")], "compare": [at("epoch_3"), at("epoch_12"), "--kind", "compare"],
            "curvature": [at("curvature"), "--kind", "curvature"],
            "trajectory": [os.path.join(path, "trajectory_surface.h5"), *trajectory]}


def draw(work: str, out: str, kinds: dict[str, list[str]]) -> list[str]:
    """Each kind's PNG and page into ``work``, the pictures and the pages' screenshots into ``out``."""
    pages = {}
    for kind, args in kinds.items():
        lossgrid("plot", *args, "--dpi", "100", "--out", os.path.join(out, f"{kind}.png"))
        if kind != "surface3d":  # the surface's page is the 3D panel and the contour
            pages[kind] = os.path.join(work, f"{kind}.html")
            lossgrid("plot", *args, "--out", pages[kind])
    pages["evolution"] = os.path.join(work, "evolution.html")
    shutil.copyfile(os.path.join(work, "evolution.gif"), os.path.join(out, "evolution.gif"))
    problems = []
    with browser.Browser() as chromium:
        for kind, page in pages.items():
            (seen,) = chromium.inspect(page, [WINDOW], [os.path.join(out, f"{kind}-page.png")])
            problems += [f"{kind}: {p}" for p in seen.problems()]
    return problems


def shrink(folder: str) -> None:
    """Every PNG in ``folder`` with a 256-colour palette (a third of the bytes, no visible change)."""
    from PIL import Image

    for name in sorted(os.listdir(folder)):
        if name.endswith(".png"):
            path = os.path.join(folder, name)
            with Image.open(path) as image:
                small = image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
            small.save(path, optimize=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/img", help="where the images go (default: docs/img)")
    parser.add_argument("--work", help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--redraw", action="store_true", help="draw again from the runs already in --work")
    args = parser.parse_args()
    why = browser.unavailable()
    if why:
        print(f"screenshots: {why}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    work = args.work or tempfile.mkdtemp(prefix="lossgrid-screenshots-")
    t0 = time.perf_counter()
    if not args.redraw:
        compute(work)
    problems = draw(work, args.out, kinds(work))
    shrink(args.out)
    for p in problems:
        print("page problem:", p, file=sys.stderr)
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s (runs in {work})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
