import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lossgrid.config import MAX_GRID_POINTS, Axis, DirectionSpec, EvalSpec, GridSpec
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


# -- property-based: grid parsing never crashes, and round-trips ----------------------------
_finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40) | st.builds(lambda a, b, c: f"{a}:{b}:{c}", st.text(max_size=8), st.text(max_size=8),
                                        st.text(max_size=8)))
def test_axis_parse_raises_only_config_errors(text):
    try:
        axis = Axis.parse(text)
    except ConfigError:
        return
    coords = axis.coordinates()
    assert len(coords) == axis.num and np.isfinite(coords).all()


@settings(max_examples=300, deadline=None)
@given(_finite, _finite, st.integers(min_value=-5, max_value=MAX_GRID_POINTS * 2))
def test_axis_round_trip(lo, hi, num):
    text = f"{lo!r}:{hi!r}:{num}"
    valid = 1 <= num <= MAX_GRID_POINTS and (lo < hi if num > 1 else lo == hi)
    if not valid:
        with pytest.raises(ConfigError):
            Axis.parse(text)
        return
    axis = Axis.parse(text)
    assert axis == Axis(lo, hi, num)
    if num <= 10_000:
        coords = axis.coordinates()
        assert len(coords) == num and coords[0] == lo and coords[-1] == hi and np.all(np.diff(coords) >= 0)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 5000) | st.none())
def test_grid_size_limit(nx, ny):
    x = Axis(-1.0, 1.0, nx) if nx > 1 else Axis(0.0, 0.0, 1)
    y = None if ny is None else Axis(-1.0, 1.0, ny) if ny > 1 else Axis(0.0, 0.0, 1)
    if nx * (ny or 1) > MAX_GRID_POINTS:
        with pytest.raises(ConfigError, match="at most"):
            GridSpec(x, y)
    else:
        grid = GridSpec(x, y)
        assert grid.shape == ((nx,) if ny is None else (nx, ny))
