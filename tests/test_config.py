import numpy as np
import pytest

from lossgrid.config import Axis, DirectionSpec, EvalSpec, GridSpec
from lossgrid.errors import ConfigError


@pytest.mark.parametrize("text,expected", [
    ("-1:1:3", [-1.0, 0.0, 1.0]),
    ("0:0.5:2", [0.0, 0.5]),
    ("-2:-1:3", [-2.0, -1.5, -1.0]),
    ("0:0:1", [0.0]),
    ("-0.5:1.5:5", [-0.5, 0.0, 0.5, 1.0, 1.5]),
])
def test_axis_parse(text, expected):
    np.testing.assert_allclose(Axis.parse(text).coordinates(), expected)


@pytest.mark.parametrize("text", ["1:2", "a:1:3", "-1:1:x", "-1:1:0", "1:-1:5", "0:1:1", "-1:1:2.5", "", "nan:1:3",
                                  "-1:inf:3", "1:1:3"])
def test_axis_rejects(text):
    with pytest.raises(ConfigError) as e:
        Axis.parse(text)
    assert "MIN" in str(e.value) or "bounds" in str(e.value) or "NUM" in str(e.value)


def test_grid_points_order_matches_surface_arrays():
    grid = GridSpec.parse("-1:1:3", "0:1:2")
    pts = grid.points()
    assert grid.shape == (3, 2)
    # C order of [ix, iy]: point k = (x[k // ny], y[k % ny])
    assert pts.tolist() == [[-1, 0], [-1, 1], [0, 0], [0, 1], [1, 0], [1, 1]]
    assert GridSpec.parse("-1:1:3").points().shape == (3, 1)


def test_direction_spec_defaults_are_the_papers():
    spec = DirectionSpec()
    assert (spec.dir_type, spec.xnorm, spec.xignore) == ("weights", "filter", "biasbn")
    assert (spec.y_norm, spec.y_ignore) == ("filter", "biasbn")
    assert DirectionSpec(xnorm="layer", xignore="none").y_norm == "layer"
    assert DirectionSpec(xnorm="layer", ynorm="none").y_norm == "none"


@pytest.mark.parametrize("kwargs", [{"dir_type": "grads"}, {"xnorm": "l2"}, {"xignore": "bn"}, {"seed": -1},
                                    {"ynorm": "x"}])
def test_direction_spec_rejects(kwargs):
    with pytest.raises(ConfigError):
        DirectionSpec(**kwargs)


def test_eval_spec_rejects():
    with pytest.raises(ConfigError):
        EvalSpec(points_per_call=0)
    with pytest.raises(ConfigError):
        EvalSpec(batch_size=0)
