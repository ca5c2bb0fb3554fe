"""The bench library: result schema, loss agreement between rows, projections. No timed assertions."""

import json

import pytest
import torch

from lossgrid.bench.run import ROW_KEYS, SCHEMA_VERSION, Projection, combinations, run_bench
from lossgrid.engine.runners import STRATEGIES
from lossgrid.errors import ConfigError

HEADER_TYPES = {
    "schema_version": int, "lossgrid_version": str, "device": str, "device_name": str, "torch_version": str,
    "cores": int, "torch_threads": int, "date": str, "model": str, "parameters": int, "flops_per_sample": float,
    "data": str, "samples": int, "points": int, "loss": str, "coefficients": list, "seed": int,
    "peak_gemm": dict, "rows": list,
}
NUMBER = (int, float)
ROW_TYPES = {
    "backend": str, "strategy": str, "precision": str, "available": bool, "ran": str, "seconds": NUMBER,
    "setup_seconds": NUMBER, "warmup_seconds": NUMBER, "points": int, "samples": int,
    "points_x_samples_per_s": NUMBER, "images_per_s": NUMBER, "achieved_tflops": NUMBER, "pct_of_peak": NUMBER,
    "peak_memory_bytes": int, "peak_memory_scope": str, "points_per_call": int, "batch_size": int,
    "max_rel_loss_error": NUMBER, "max_abs_loss_error": NUMBER, "projected_seconds": NUMBER, "loss": list,
    "acc": list, "runner": dict,
}


@pytest.fixture(scope="module")
def digits():
    from lossgrid.data import load_data

    return load_data("digits:test", samples=120)


@pytest.fixture(scope="module")
def cnn_result(digits):
    """Every backend and strategy (auto included) on the demo CNN, fp32 and tf32 (unavailable on a CPU)."""
    from lossgrid.zoo import resnet_digits

    torch.manual_seed(0)
    return run_bench(resnet_digits(), digits, backends=["torch", "onnxruntime", "auto"],
                     strategies=sorted({s for names in STRATEGIES.values() for s in names}),
                     precisions=("fp32", "tf32"), points=3, project="51x51:50000",
                     model_description="lossgrid.zoo:resnet_digits")


def test_schema(cnn_result):
    result = json.loads(json.dumps(cnn_result, allow_nan=False))  # strict JSON: no NaN or Infinity
    for key, kind in HEADER_TYPES.items():
        assert isinstance(result[key], kind), key
    assert result["schema_version"] == SCHEMA_VERSION and result["samples"] == 120 and result["points"] == 3
    assert result["project"] == {"text": "51x51:50000", "nx": 51, "ny": 51, "samples": 50000}
    assert result["peak_gemm"]["fp32"]["tflops"] > 0 and result["peak_gemm"]["fp32"]["torch_tflops"] > 0
    assert result["peak_gemm"]["tf32"]["tflops"] is None and "tf32" in result["peak_gemm"]["tf32"]["reason"]
    assert len(result["coefficients"]) == 3
    for row in result["rows"]:
        assert set(ROW_TYPES) - {"ran"} <= set(ROW_KEYS)
        assert isinstance(row["available"], bool) and row["precision"] in ("fp32", "tf32")
        if not row["available"]:  # the reason says what, why and how
            assert isinstance(row["reason"], str) and len(row["reason"]) > 20
            continue
        assert row["reason"] is None
        for key, kind in ROW_TYPES.items():
            assert isinstance(row[key], kind), (row["backend"], row["strategy"], key, row[key])
        assert row["points"] == 3 and len(row["loss"]) == 3 and row["samples"] == 120
        assert row["images_per_s"] == row["points_x_samples_per_s"]
        assert row["peak_memory_scope"].startswith("process")  # the CPU's count is the process's peak RSS
        assert row["seconds"] > 0 and row["achieved_tflops"] > 0 and row["pct_of_peak"] > 0


def test_rows_cover_every_combination(cnn_result):
    rows = {(r["backend"], r["strategy"], r["precision"]): r for r in cnn_result["rows"]}
    expected = {(b, s, p) for b in ("torch", "onnxruntime", "auto") for s in STRATEGIES[b] for p in ("fp32", "tf32")}
    assert set(rows) == expected
    for (_, _, precision), row in rows.items():
        assert row["available"] == (precision == "fp32"), row  # no TF32 on a CPU; fp32 runs everywhere here
    assert "TF32" in rows["torch", "loop", "tf32"]["reason"]
    assert rows["auto", "auto", "fp32"]["ran"].split("/")[1] in STRATEGIES["torch"] + STRATEGIES["onnxruntime"]


def test_fp32_rows_agree(cnn_result):
    fp32 = [r for r in cnn_result["rows"] if r["available"] and r["precision"] == "fp32"]
    assert len(fp32) >= 5 and cnn_result["loss_reference"] == f"{fp32[0]['backend']}/{fp32[0]['strategy']} fp32"
    assert fp32[0]["max_rel_loss_error"] == 0.0
    for row in fp32:
        assert row["max_rel_loss_error"] <= 1e-4, (row["backend"], row["strategy"], row["max_rel_loss_error"])


def test_projection_in_rows(cnn_result):
    for row in cnn_result["rows"]:
        if row["available"]:
            assert row["projected_seconds"] == pytest.approx(51 * 51 * 50000 / row["points_x_samples_per_s"])


def test_mlp_rows_agree_and_tuple_data():
    from lossgrid.zoo import mlp_digits

    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(64, 1, 8, 8, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    model = mlp_digits()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = run_bench(model, (x, y), backends=["torch", "onnxruntime"], points=4, points_per_call=2,
                       batch_size=32)
    assert result["project"] is None and result["data"] == "in-memory tensors"
    assert result["parameters"] == sum(p.numel() for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is not modified
    for row in result["rows"]:
        assert row["available"], row["reason"]
        assert row["projected_seconds"] is None and row["points_per_call"] == 2 and row["batch_size"] == 32
        assert row["max_rel_loss_error"] <= 1e-4, (row["backend"], row["strategy"])


def test_budget_skips_rows(digits):
    from lossgrid.zoo import mlp_digits

    result = run_bench(mlp_digits(), digits, backends=["torch"], strategies=["loop", "vmap"], points=1, budget_s=0)
    assert [r["available"] for r in result["rows"]] == [False, False]
    assert all("time budget" in r["reason"] for r in result["rows"])
    assert result["loss_reference"] is None


def test_a_row_that_raises_is_one_unavailable_row_and_the_others_are_measured(monkeypatch, digits):
    import lossgrid.bench.run as bench
    from lossgrid.zoo import mlp_digits

    real = bench.make_runner

    def flaky(spec, *args, **kwargs):
        if spec.strategy == "wide":
            raise ZeroDivisionError("while building the wide model")  # a backend failing to set up
        runner = real(spec, *args, **kwargs)
        if spec.strategy == "vmap":
            def fail(coeffs):  # a backend failing at run time with an error no runner expects
                raise KeyError("lost weight")
            runner.evaluate_points = fail
        return runner

    monkeypatch.setattr(bench, "make_runner", flaky)
    result = run_bench(mlp_digits(), digits, backends=["torch"], strategies=["loop", "vmap", "wide", "static"],
                       points=2)
    rows = {r["strategy"]: r for r in result["rows"]}
    assert rows["loop"]["available"] and rows["static"]["available"]
    assert not rows["vmap"]["available"] and not rows["wide"]["available"]
    assert rows["vmap"]["reason"] == "failed in evaluation: KeyError: 'lost weight'"
    assert rows["wide"]["reason"] == "failed in set-up: ZeroDivisionError: while building the wide model"
    assert any("in fail" in frame for frame in rows["vmap"]["traceback"])  # where it was raised
    json.dumps(result, allow_nan=False)


def test_combos_time_the_rows_named_in_their_order_and_partial_results_come_as_they_go(digits):
    from lossgrid.bench.run import plan_rows
    from lossgrid.zoo import mlp_digits

    combos = [("fp32", "torch", "static"), ("tf32", "torch", "loop"), ("fp32", "torch", "loop")]
    seen = []
    result = run_bench(mlp_digits(), digits, points=2, combos=combos,
                       partial=lambda r: seen.append(json.loads(json.dumps(r, allow_nan=False))))
    assert [(r["precision"], r["backend"], r["strategy"]) for r in result["rows"]] == combos
    assert [r["available"] for r in result["rows"]] == [True, False, True]  # no TF32 on a CPU
    assert result["loss_reference"] == "torch/static fp32" and set(result["peak_gemm"]) == {"fp32", "tf32"}
    # partial results: before every row (the rows done, the one starting, the rest) and after the last
    specs = [{"precision": p, "backend": b, "strategy": s} for p, b, s in combos]
    assert [s["running"] for s in seen] == [*specs, None]
    assert [len(s["rows"]) for s in seen] == [0, 1, 2, 3] and [len(s["pending"]) for s in seen] == [2, 1, 0, 0]
    assert seen[1]["rows"][0]["points_x_samples_per_s"] > 0 and seen[1]["peak_gemm"]["fp32"]["tflops"] > 0
    assert [r.get("loss") for r in seen[-1]["rows"]] == [r.get("loss") for r in result["rows"]]
    assert "running" not in result and "pending" not in result
    with pytest.raises(ConfigError, match="No strategy baked"):
        plan_rows(None, None, (), [("fp32", "torch", "baked")])
    with pytest.raises(ConfigError, match="fp64"):
        plan_rows(None, None, (), [("fp64", "torch", "loop")])


@pytest.mark.parametrize("text,nx,ny,samples", [("51x51:50000", 51, 51, 50000), ("1x7:3", 1, 7, 3)])
def test_projection_parse(text, nx, ny, samples):
    p = Projection.parse(text)
    assert (p.nx, p.ny, p.samples, p.points, str(p)) == (nx, ny, samples, nx * ny, text)
    assert p.seconds(nx * ny * samples / 10.0) == pytest.approx(10.0)  # 10 s at that throughput


@pytest.mark.parametrize("text", ["51x51", "51*51:50000", "51X51:50000", " 51x51:5", "51x51:5 ", "0x51:10",
                                  "51x51:0", "51x51:-5", "a:b", "", "1.5x2:3", "3000x3000:1", "51x51x51:5"])
def test_projection_rejects(text):
    with pytest.raises(ConfigError) as e:
        Projection.parse(text)
    assert e.value.why and e.value.hint and "NXxNY:SAMPLES" in e.value.hint


def test_combinations():
    assert ("torch", "auto") not in combinations() and ("auto", "auto") not in combinations()
    assert combinations(["auto"]) == [("auto", "auto")]
    assert combinations(["torch", "onnxruntime"], ["auto"]) == [("torch", "auto"), ("onnxruntime", "auto")]
    assert combinations(["torch", "onnxruntime"], ["baked"]) == [("onnxruntime", "baked")]
    with pytest.raises(ConfigError, match="Unknown backend"):
        combinations(["nope"])
    with pytest.raises(ConfigError, match="belongs to"):
        combinations(["torch"], ["baked"])


@pytest.mark.parametrize("kwargs,needle", [
    ({"points": 0}, "points=0"),
    ({"device": "tpu"}, "tpu"),
    ({"precisions": ("fp64",)}, "fp64"),
    ({"project": "51x51"}, "Cannot read projection"),
])
def test_bad_arguments(digits, kwargs, needle):
    from lossgrid.zoo import mlp_digits

    with pytest.raises(ConfigError, match=needle):
        run_bench(mlp_digits(), digits, **kwargs)


@pytest.mark.gpu
def test_cuda_rows():
    from lossgrid.zoo import resnet20

    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(256, 3, 32, 32, generator=gen, device="cuda")
    y = torch.randint(0, 10, (256,), generator=gen, device="cuda")
    result = run_bench(resnet20(), (x, y), device="cuda", backends=["torch"], strategies=["loop", "static"],
                       precisions=("fp32", "tf32", "bf16", "fp16"), points=2)
    assert result["device"].startswith("cuda") and result["cuda_version"]
    for row in result["rows"]:
        assert row["available"], row["reason"]
        assert row["peak_memory_scope"].startswith("row") and row["peak_memory_bytes"] > 0
        assert row["batch_size"] == 256  # GPU-sized: the whole set in one batch
    errors = {(r["precision"], r["strategy"]): r["max_rel_loss_error"] for r in result["rows"]}
    assert errors["fp32", "loop"] == 0.0 and errors["fp32", "static"] < 1e-5
    assert errors["tf32", "static"] < 1e-2  # TF32 shows only where cuDNN picks tensor-core kernels
    for precision, bound in (("bf16", 5e-2), ("fp16", 1e-2)):  # autocast always shows in the losses
        assert 0 < errors[precision, "static"] < bound, (precision, errors)
    assert all(result["peak_gemm"][p]["tflops"] > 0 for p in ("fp32", "tf32", "bf16", "fp16"))


def test_flops_per_sample_counts_multiply_adds_twice():
    from torch import nn

    from lossgrid.bench.machine import flops_per_sample

    assert flops_per_sample(nn.Linear(64, 10), torch.randn(5, 64)) == 2 * 64 * 10
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert flops_per_sample(conv, torch.randn(2, 3, 16, 16)) == 2 * 8 * 16 * 16 * 3 * 9
