import numpy as np
import pytest

from lossgrid.engine.surface_file import Surface
from lossgrid.errors import ConfigError
from lossgrid.render import axis_label, default_levels, plot_surface


def fake_surface(ndim, n=21):
    x = np.linspace(-1, 1, n)
    if ndim == 1:
        loss = 0.1 + x**2
        return Surface(x, None, loss, 100 - 20 * x**2, np.ones(n, bool), {"xnorm": "filter", "samples": 10})
    X, Y = np.meshgrid(x, x, indexing="ij")
    loss = 0.05 + X**2 + 2 * Y**2
    done = np.ones(loss.shape, bool)
    done[0, 0] = False
    return Surface(x, x, loss, 100 - 10 * loss, done, {"xnorm": "filter", "ynorm": "filter", "samples": 10})


def pixels(path):
    import matplotlib.image

    img = matplotlib.image.imread(path)
    return img


@pytest.mark.parametrize("ndim,kind", [(1, "auto"), (1, "curve"), (2, "auto"), (2, "contour"),
                                       (2, "contourf"), (2, "heatmap")])
def test_every_kind_renders_non_blank(tmp_path, ndim, kind):
    out = tmp_path / f"{kind}.png"
    plot_surface(fake_surface(ndim), out, kind=kind)
    img = pixels(out)
    assert img.shape[0] >= 400 and img.shape[1] >= 600
    assert img[..., :3].std() > 0.05


def test_log_and_metrics(tmp_path):
    for metric in ("loss", "acc", "err"):
        plot_surface(fake_surface(2), tmp_path / f"{metric}.png", metric=metric, log=True, levels=10, vmax=3)
    with pytest.raises(ConfigError):
        plot_surface(fake_surface(2), tmp_path / "x.png", kind="curve")
    with pytest.raises(ConfigError):
        plot_surface(fake_surface(1), tmp_path / "x.png", kind="contour")


def test_axis_labels_and_levels():
    assert axis_label({"xnorm": "filter"}, "x") == "filter-normalized direction 1"
    assert axis_label({"kind": "interpolation"}, "x").startswith("interpolation")
    lv = default_levels(np.array([[0.1, 1.0], [5.0, np.nan]]), n=10)
    assert lv[0] > 0.1 and np.all(np.diff(lv) > 0) and np.all(np.diff(np.diff(lv)) > 0)
