"""The audit report: its JSON schema, its numbers, the --fail-if language, and a
sharp-vs-flat sanity check on models trained in the test."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from lossgrid.audits import measures
from lossgrid.audits.gate import ALIASES, check_fields, evaluate, missing_values, numeric_fields, parse_condition
from lossgrid.audits.report import audit, gate_fields, load_schema
from lossgrid.data import load_data
from lossgrid.errors import ConfigError

# -- a validator for the subset of JSON Schema the report's schema uses ------------------------------------------
KEYWORDS = {"$schema", "$id", "title", "description", "type", "required", "properties", "items", "enum", "minimum",
            "x-gate-aliases"}
TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, TYPES[name])


def validate(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Errors of ``value`` against ``schema`` (keywords: type, required, properties, items,
    enum, minimum); an unknown keyword is an error too, so the schema cannot outgrow this."""
    errors = [f"{path}: unsupported keyword {k}" for k in schema if k not in KEYWORDS]
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_is_type(value, t) for t in names):
            return errors + [f"{path}: {value!r} is not of type {names}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if "minimum" in schema and _is_type(value, "number") and value < schema["minimum"]:
        errors.append(f"{path}: {value!r} < minimum {schema['minimum']}")
    if isinstance(value, dict):
        errors += [f"{path}: missing required {k}" for k in schema.get("required", []) if k not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += validate(value[key], sub, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += validate(item, schema["items"], f"{path}[{i}]")
    return errors


def undocumented(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Report keys the schema does not list, and schema properties without a description."""
    out = []
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out += [f"{path}.{k}: not in the schema" for k in value if k not in props]
        out += [f"{path}.{k}: no description" for k, s in props.items() if not s.get("description")]
        for k, v in value.items():
            if k in props:
                out += undocumented(v, props[k], f"{path}.{k}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += undocumented(item, schema["items"], f"{path}[{i}]")
    return out


def test_validator_catches_errors():
    schema = {"type": "object", "required": ["a"], "properties": {"a": {"type": "number", "minimum": 0},
                                                                  "b": {"type": "array", "items": {"enum": [1]}}}}
    assert validate({"a": 1, "b": [1]}, schema) == []
    assert len(validate({"b": [2]}, schema)) == 2
    assert validate({"a": -1}, schema) == ["$.a: -1 < minimum 0"]
    assert validate({"a": True}, schema)  # booleans are not numbers
    assert validate(1, {"maximum": 2}) == ["$: unsupported keyword maximum"]


# -- fixtures ------------------------------------------------------------------------------------------------------
def train_mlp(batch_size: int, steps: int, seed: int = 0, lr: float = 0.1, data: Any = None) -> nn.Module:
    """The 64-64-64-10 MLP trained by plain SGD (no momentum, no weight decay) for ``steps`` steps."""
    from lossgrid.zoo import mlp_digits

    data = data if data is not None else load_data("digits:train")
    torch.manual_seed(seed)
    model = mlp_digits()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    done = 0
    while done < steps:
        order = torch.randperm(len(data), generator=gen)
        for start in range(0, len(data) - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(model(data.x[idx]), data.y[idx]).backward()
            opt.step()
            done += 1
            if done == steps:
                break
    return model.eval()


@pytest.fixture(scope="module")
def train_set():
    return load_data("digits:train", samples=400)


@pytest.fixture(scope="module")
def mlp(train_set):
    return train_mlp(32, 300, data=train_set)


SMALL = dict(radii=(0.02, 0.1), directions=4, trace_samples=8, ascent_steps=3)


@pytest.fixture(scope="module")
def report(mlp, train_set):
    return audit(mlp, train_set, **SMALL)


# -- the report ----------------------------------------------------------------------------------------------------
def test_report_matches_schema(report, mlp, train_set):
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert validate(report, schema) == []
    assert undocumented(report, schema) == []
    with_barrier = audit(mlp, train_set, model2=train_mlp(32, 300, seed=1, data=train_set), hessian=False, **SMALL)
    assert validate(with_barrier, schema) == [] and undocumented(with_barrier, schema) == []
    broken = {**report, "center": {"loss": "low"}}
    assert validate(broken, schema)  # the validator does look


def test_fields_present_and_finite(report, train_set):
    fields = {k: v for k, v in numeric_fields(report).items() if k in gate_fields(2) and k != "settings.batch_size"}
    assert len(fields) > 40 and all(v is not None and math.isfinite(v) for v in fields.values()), fields
    assert report["samples"] == len(train_set) and report["parameters"] == 64 * 64 + 64 * 64 + 64 * 10 + 138
    assert 0 <= report["center"]["loss"] < 1 and report["center"]["accuracy"] > 80
    sharp = report["sharpness"]
    assert sharp["lower_bound"] is True and sharp["value"] > 0 and sharp["steps"] == 3
    assert sharp["max_filter_fraction"] <= 1 + 1e-5  # the point found lies in the ball
    assert math.isclose(sharp["loss_at_max"] - report["center"]["loss"], sharp["value"], rel_tol=1e-9)
    rows = report["random_directions"]
    assert [r["radius"] for r in rows] == [0.02, 0.1]
    for r in rows:
        assert r["ci95_low"] <= r["mean_increase"] <= r["ci95_high"] and r["directions"] == 4
        assert math.isclose(r["mean_increase"], (r["mean_increase_plus"] + r["mean_increase_minus"]) / 2)
    assert rows[1]["mean_increase"] > rows[0]["mean_increase"] > 0  # a minimum: the loss rises with the radius
    fits = report["quadratic_fits"]
    assert fits["curvature_mean"] > 0 and 0.5 < fits["r2_median"] <= 1 and len(fits["curvatures"]) == 4
    h = report["hessian"]
    assert h["top_eig"] > 0 and h["top_eig_residual"] < 1e-2 * h["top_eig"]
    assert h["trace"] > h["top_eig"] and math.isclose(h["trace_over_top"], h["trace"] / h["top_eig"])
    assert report["barrier"] is None and report["model2"] is None


def test_curvature_is_bounded_by_the_top_eigenvalue(report, mlp):
    """Along a filter-normalized direction d, |d| = |w| over the weight matrices, so the
    fitted curvature 2a ~ d^T H d is at most top_eig * |w|^2 (up to the fit's cubic terms)."""
    w2 = sum(float(p.detach().pow(2).sum()) for p in mlp.parameters() if p.dim() > 1)
    fits, h = report["quadratic_fits"], report["hessian"]
    assert 0 < max(fits["curvatures"]) < 1.2 * h["top_eig"] * w2


def test_reproducible_with_the_same_seed(report, mlp, train_set):
    again = audit(mlp, train_set, **SMALL)
    strip = ("seconds",)
    assert {k: v for k, v in again.items() if k not in strip} == {k: v for k, v in report.items() if k not in strip}
    other = audit(mlp, train_set, seed=1, hessian=False, **SMALL)
    assert other["random_directions"] != report["random_directions"]
    assert other["center"] == report["center"]


def test_model_is_not_modified(mlp, train_set):
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    audit(mlp, train_set, hessian=False, **SMALL)
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items())


def test_barrier(mlp, train_set):
    same = audit(mlp, train_set, model2=mlp, hessian=False, **SMALL)["barrier"]
    assert abs(same["value"]) < 1e-5 and same["loss_start"] == pytest.approx(same["loss_end"], abs=1e-6)
    other = train_mlp(32, 300, seed=1, data=train_set)
    b = audit(mlp, train_set, model2=other, hessian=False, **SMALL)["barrier"]
    assert len(b["alphas"]) == len(b["losses"]) == 25 and b["alphas"][0] == 0 and b["alphas"][-1] == 1
    assert b["value"] > 0.2 and 0 < b["alpha"] < 1  # two independent solutions: a barrier between them
    i = b["alphas"].index(b["alpha"])
    chord = (1 - b["alpha"]) * b["loss_start"] + b["alpha"] * b["loss_end"]
    assert b["value"] == pytest.approx(b["losses"][i] - chord)


def test_settings_are_checked(mlp, train_set):
    for bad in (dict(radii=()), dict(radii=(-0.1,)), dict(directions=0), dict(sharpness_radius=0.0),
                dict(ascent_steps=-1), dict(trace_samples=2)):
        with pytest.raises(ConfigError):
            audit(mlp, train_set, **{**SMALL, **bad})


def test_sharp_vs_flat():
    """The same MLP, the same data and the same budget of 2000 SGD steps (lr 0.1, no
    weight decay): batches of 256 land in a sharper minimum than batches of 8.

    Both fit the training set. The Hessian's top eigenvalue and trace and the
    random-direction increase separate the two (seen over training seeds 0-3: top_eig
    1.9-4.7 vs 6.5-7.9, trace 12-18 vs 29-32; full batches of 1437 give about the same
    at four times the cost). The top eigenvalue's ratio is 3.6 at the seed used here
    but only 1.7 at seed 3; the ascent sharpness does NOT separate reliably (larger for
    batches of 256 at seeds 0-2, tied at seed 3). Both are checked at seed 0 only.
    """
    data = load_data("digits:train")
    flat, sharp = train_mlp(8, 2000, data=data), train_mlp(256, 2000, data=data)
    settings = dict(radii=(0.05,), directions=4, trace_samples=16)
    a, b = audit(flat, data, **settings), audit(sharp, data, **settings)
    for r in (a, b):
        assert r["center"]["loss"] < 0.05 and r["center"]["accuracy"] > 98  # both fit the data
    assert b["hessian"]["top_eig"] > 2 * a["hessian"]["top_eig"]
    assert b["hessian"]["trace"] > 1.5 * a["hessian"]["trace"]
    assert b["random_directions"][0]["mean_increase"] > 1.3 * a["random_directions"][0]["mean_increase"]
    assert b["sharpness"]["value"] > a["sharpness"]["value"]


@pytest.mark.slow
def test_demo_model_audit_takes_seconds():
    """The demo's residual CNN (trained the demo's way, briefly) on all 1437 training digits."""
    from lossgrid.demo import train_demo_model

    data = load_data("digits:train")
    model = train_demo_model(load_data("digits:train", samples=300), epochs=1)
    t0 = time.perf_counter()
    report = audit(model, data)
    seconds = time.perf_counter() - t0
    print(f"demo model audit: {seconds:.1f} s")
    assert validate(report, load_schema()) == []
    assert seconds < 120  # about 5 s on 2 idle CPU cores


# -- helpers -------------------------------------------------------------------------------------------------------
def test_t_quantile():
    assert measures.t_quantile_975(1) == 12.706 and measures.t_quantile_975(30) == 2.042
    assert abs(measures.t_quantile_975(31) - 2.0395) < 1e-3 and abs(measures.t_quantile_975(10 ** 6) - 1.96) < 1e-3
    stats = pytest.importorskip("scipy.stats")
    for df in (31, 40, 60, 120, 1000):
        assert abs(measures.t_quantile_975(df) - stats.t.ppf(0.975, df)) < 1e-4


def test_quadratic_fit_and_ci():
    x = np.linspace(-1, 1, 9)
    curv, r2 = measures.quadratic_fit(x, 3 * x ** 2 - x + 2)
    assert curv == pytest.approx(6) and r2 == pytest.approx(1)
    assert all(math.isnan(v) for v in measures.quadratic_fit(x[:2], x[:2]))
    ci = measures.mean_ci95(np.array([1.0, 2.0, 3.0]))
    assert ci["mean"] == 2 and ci["ci95_high"] == pytest.approx(2 + 4.303 / math.sqrt(3))
    assert measures.mean_ci95(np.array([1.0]))["ci95_low"] is None
    assert measures.finite_or_none(float("nan")) is None and measures.finite_or_none(float("inf")) is None


# -- the --fail-if language ----------------------------------------------------------------------------------------
REPORT = {"center": {"loss": 0.5, "accuracy": 90.0}, "hessian": {"top_eig": 100.0, "trace": None},
          "sharpness": {"value": 0.3, "lower_bound": True}, "random_directions": [{"mean_increase": 0.01}],
          "barrier": None, "settings": {"radii": [0.1, 0.2]}}


@pytest.mark.parametrize("text,expected", [
    ("top_eig > 50", True),
    ("hessian.top_eig <= 50", False),
    ("loss > 1 or top_eig > 50 and sharpness > 1", False),  # and binds tighter than or
    ("(loss > 1 or top_eig > 50) and sharpness > 0.2", True),
    ("not loss > 1 and acc >= 90", True),  # not binds tighter than and
    ("not (loss < 1 and acc >= 90)", False),
    ("random_directions.0.mean_increase == 0.01", True),
    ("-1 < loss", True),
    ("sharpness != 0.3", False),
    ("acc<1e2", True),
])
def test_gate_expressions(text, expected):
    assert evaluate(parse_condition(text), REPORT) is expected


@pytest.mark.parametrize("text", [
    "__import__('os')", "__import__('os').system('true') > 0", "loss.__class__ > 1", "loss", "loss >", "> 1",
    "loss > 1 >", "1 < loss < 2", "(loss > 1", "loss > 1)", "loss > 'a'", "loss > 1; x", "loss = 1",
    "len(loss) > 1", "", "loss > 1 and", "loss > - acc", "lambda: 1", "loss > 1 && acc > 2",
    "1 > 0", "(" * 3000 + "loss > 1" + ")" * 3000, "not " * 3000 + "loss > 1",
])
def test_gate_rejects_everything_else(text):
    with pytest.raises(ConfigError) as e:
        parse_condition(text)
    assert "Hint:" in str(e.value)


def test_gate_fields():
    with pytest.raises(ConfigError) as e:
        evaluate(parse_condition("hessian.top > 1"), REPORT)
    msg = str(e.value)
    assert "'hessian.top'" in msg and "hessian.top_eig" in msg and "top_eig = hessian.top_eig" in msg
    with pytest.raises(ConfigError, match="barrier.value"):  # null section: the field does not exist
        evaluate(parse_condition("barrier > 0.1"), REPORT)
    # a field without a finite value makes its condition true (never passes a gate), in any order
    for text in ("trace > 1", "trace < 1", "not trace > 1", "loss > 1e9 or trace > 1", "trace > 1 or loss > 1e9"):
        assert evaluate(parse_condition(text), REPORT), text
        assert missing_values(parse_condition(text), REPORT) == ["hessian.trace"]
    assert not missing_values(parse_condition("loss > 1e9"), REPORT)
    assert "settings.radii" not in numeric_fields(REPORT) and "sharpness.lower_bound" not in numeric_fields(REPORT)


def test_gate_fields_come_from_the_schema(report, mlp, train_set):
    assert load_schema()["x-gate-aliases"] == ALIASES
    fields = numeric_fields(report)
    assert set(gate_fields(2, hessian=True)) <= set(fields)
    # the rest are nulls of non-numeric fields or sections: model2, barrier
    assert {k: v for k, v in fields.items() if k not in gate_fields(2)} == {"model2": None, "barrier": None}
    assert not [f for f in gate_fields(3, hessian=False, barrier=True) if f.startswith("hessian.")]
    assert "barrier.value" in gate_fields(1, barrier=True) and "barrier.value" not in gate_fields(1)
    for alias in ALIASES:
        check_fields(parse_condition(f"{alias} > 0"), gate_fields(1, barrier=True))
