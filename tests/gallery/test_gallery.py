"""The gallery: its metrics on known surfaces, and the CI-size run through the CLI."""

import json
import math
import os

import numpy as np
import pytest
from click.testing import CliRunner

from lossgrid.cli.group import cli
from lossgrid.errors import ConfigError
from lossgrid.gallery.build import (
    VMAX,
    convexity,
    gallery_config,
    loss_rise,
    negative_curvature_ratio,
    shared_scale,
    slice_hessian,
)
from lossgrid.surface.file import Surface, load_surface

FIGURES = ("shortcuts_contour", "shortcuts_3d", "shortcuts_convexity", "batch_contour", "batch_3d", "batch_1d")


def _surface(fn, n=21, span=1.0):
    xs = np.linspace(-span, span, n)
    X, Y = np.meshgrid(xs, xs, indexing="ij")
    loss = fn(X, Y)
    return Surface(xs, xs.copy(), loss, np.zeros_like(loss), np.ones(loss.shape, dtype=bool))


def test_slice_hessian_is_exact_on_quadratics():
    s = _surface(lambda x, y: 3 * x ** 2 + 2 * x * y + y ** 2)  # Hessian [[6, 2], [2, 2]]
    lmin, lmax = slice_hessian(s)
    exact = np.linalg.eigvalsh([[6.0, 2.0], [2.0, 2.0]])
    assert np.isnan(lmin[0, 5]) and np.isnan(lmax[5, -1])
    np.testing.assert_allclose(lmin[1:-1, 1:-1], exact[0], rtol=1e-9)
    np.testing.assert_allclose(lmax[1:-1, 1:-1], exact[1], rtol=1e-9)


def test_convexity_of_a_bowl_a_saddle_and_a_mix():
    bowl = convexity(_surface(lambda x, y: x ** 2 + y ** 2), 1.0)
    assert bowl["nonconvex_share"] == 0.0 and bowl["negative_curvature"] == 0.0
    assert bowl["points"] == sum(1 for i in range(-9, 10) for j in range(-9, 10) if i * i + j * j <= 100)
    saddle = convexity(_surface(lambda x, y: x ** 2 - 0.5 * y ** 2), 1.0)
    assert saddle["nonconvex_share"] == 1.0 and saddle["negative_curvature"] == pytest.approx(0.5)
    # -cos(3y) has the second derivative 9 cos(3y): convex for |y| < pi/6, concave beyond
    mixed = _surface(lambda x, y: x ** 2 - np.cos(3 * y))
    inner, outer = convexity(mixed, 0.45), convexity(mixed, 1.0)
    assert inner["nonconvex_share"] == 0.0 and 0 < outer["nonconvex_share"] < 1
    assert negative_curvature_ratio(np.array([-1.0, 1.0, -3.0]), np.array([2.0, 2.0, -1.0])) == pytest.approx(
        [0.5, 0.0, 1.0])


def test_loss_rise_and_shared_scale():
    k = 2.0
    s = _surface(lambda x, y: k * (x ** 2 + y ** 2) + 0.1)
    assert loss_rise(s, 0.5) == pytest.approx(k * 0.25, rel=0.03)  # bilinear between grid points
    assert loss_rise(_surface(lambda x, y: 0 * x + 1.0), 0.7) == pytest.approx(0.0)
    steep = _surface(lambda x, y: 50 * (x ** 2 + y ** 2))
    scale = shared_scale([s, steep])
    assert scale["zlim"] == [pytest.approx(0.0), VMAX]
    # geometric levels from the joint minimum (not below a thousandth of the top): fine lines in the basins
    assert scale["levels"][0] == pytest.approx(VMAX / 1000) and scale["levels"][-1] == pytest.approx(VMAX)
    assert shared_scale([s])["levels"][0] == pytest.approx(0.1)
    assert all(a < b for a, b in zip(scale["levels"], scale["levels"][1:]))


def test_config_sizes_and_refusals(tmp_path):
    ci, full = gallery_config("ci"), gallery_config("full")
    assert ci.depths[0] < ci.depths[1] and full.depths == (8, 20) and full.grid == 21
    assert [m["role"] for m in full.models()] == ["shallow", "shallow_noshort", "deep", "deep_noshort",
                                                  "small_batch", "large_batch"]
    cifar = gallery_config("full", tmp_path)
    assert cifar.in_channels == 3 and cifar.augment and (cifar.small_batch, cifar.large_batch) == (128, 8192)
    assert gallery_config("ci", epochs=7).epochs == 7
    with pytest.raises(ConfigError, match="size"):
        gallery_config("huge")
    with pytest.raises(ConfigError, match="does not exist"):
        gallery_config("ci", tmp_path / "missing")


@pytest.fixture(scope="module")
def ci_gallery(tmp_path_factory):
    out = tmp_path_factory.mktemp("gallery")
    r = CliRunner().invoke(cli, ["gallery", "--out", str(out), "--size", "ci", "--json", "-q"])
    assert r.exit_code == 0, r.output
    return out, json.loads(r.output)


def test_ci_gallery_writes_every_file(ci_gallery):
    out, result = ci_gallery
    assert result["seeds"] == [0] and result["config"]["size"] == "ci"
    seed = out / "seed_0"
    run = result["runs"]["0"]
    assert len(run["models"]) == 6
    for name in run["models"]:
        assert (seed / "models" / name / "final.pt").stat().st_size > 0
        assert json.loads((seed / "models" / name / "train.json").read_text())["complete"]
        assert load_surface(str(seed / "surfaces" / f"{name}.h5")).complete
    for key in FIGURES:
        path = seed / f"{key}.png"
        assert run["figures"][key] == str(path) and path.stat().st_size > 5000
    page = (out / "index.html").read_text()
    assert all(f"seed_0/{key}.png" in page for key in FIGURES)
    assert "deep net without shortcuts less convex" in page
    assert json.loads((out / "gallery.json").read_text()) == result
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # no temporary files left


def test_ci_gallery_numbers(ci_gallery):
    out, result = ci_gallery
    run = result["runs"]["0"]
    for m in run["models"].values():
        for key in ("train_loss", "train_acc", "test_acc", "center_loss", "nonconvex_share", "negative_curvature",
                    "loss_rise", "center_curvature", "train_seconds", "surface_seconds"):
            assert isinstance(m[key], float) and math.isfinite(m[key]), (m["name"], key)
        assert 0 <= m["nonconvex_share"] <= 1 and 0 <= m["negative_curvature"] <= 1
        assert (m["top_eig"] is not None) == (m["group"] == "batch")
        surface = load_surface(str(out / "seed_0" / "surfaces" / f"{m['name']}.h5"))
        assert m["center_loss"] == pytest.approx(float(surface.loss[3, 3]))
        assert m["nonconvex_share"] == convexity(surface, 1.0)["nonconvex_share"]
    for key, v in run["verdicts"].items():
        assert v["holds"] in (True, False), key
        assert result["verdicts"][key] == [v["holds"]]
    v = run["verdicts"]["large_batch_sharper"]
    by_role = {m["role"]: m["name"] for m in run["models"].values()}
    assert v["holds"] == (v["values"][by_role["large_batch"]] > v["values"][by_role["small_batch"]])


def test_ci_gallery_scales_are_shared(ci_gallery):
    out, result = ci_gallery
    run = result["runs"]["0"]
    for group in ("shortcuts", "batch"):
        names = [m["name"] for m in run["models"].values() if m["group"] == group]
        losses = np.concatenate([load_surface(str(out / "seed_0" / "surfaces" / f"{n}.h5")).loss.ravel()
                                 for n in names])
        scale = run["scales"][group]
        assert scale["zlim"][0] == pytest.approx(losses.min())
        assert scale["zlim"][1] == pytest.approx(min(VMAX, losses.max()))
        lo, hi = scale["zlim"]
        assert scale["levels"][0] == pytest.approx(max(lo, hi / 1000)) and scale["levels"][-1] == pytest.approx(hi)


def test_gallery_refuses_a_file_as_out(tmp_path):
    (tmp_path / "f").write_text("x")
    r = CliRunner().invoke(cli, ["gallery", "--out", str(tmp_path / "f"), "--size", "ci", "-q"])
    assert r.exit_code == 1 and "is a file" in r.output and "Traceback" not in r.output


@pytest.mark.slow
def test_gallery_on_cifar10_batches(tmp_path):
    import dataclasses
    import pickle

    from lossgrid.gallery.build import run_gallery

    rng = np.random.RandomState(0)
    for name, n in [*((f"data_batch_{i}", 30) for i in range(1, 6)), ("test_batch", 20)]:
        batch = {b"data": rng.randint(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.randint(0, 10, n))}
        with open(tmp_path / name, "wb") as fh:
            pickle.dump(batch, fh)
    cfg = gallery_config("ci", tmp_path)
    assert cfg.in_channels == 3 and cfg.augment and cfg.train_data == f"cifar10:{tmp_path}"
    cfg = dataclasses.replace(cfg, train_samples=64, surface_samples=16, hessian_iters=3)  # smaller still
    result = run_gallery(tmp_path / "g", config=cfg)
    model = result["runs"]["0"]["models"]["resnet8"]
    assert model["train_acc"] >= 0 and model["parameters"] == 78042
    surface = load_surface(str(tmp_path / "g" / "seed_0" / "surfaces" / "resnet8.h5"))
    assert surface.attrs["data"].startswith(f"cifar10:{tmp_path} (64 of 150 samples, seed 0) (16 of 64")
