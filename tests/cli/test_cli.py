"""The CLI: end to end, JSON output, exit codes, and no tracebacks on bad input."""

import json
import os

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lossgrid.cli import _should_reexec
from lossgrid.cli.group import cli
from lossgrid.surface.file import load_surface

CONFTEST = os.path.join(os.path.dirname(__file__), "..", "conftest.py")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from tests.conftest import trained_small_cnn

    path = tmp_path_factory.mktemp("ck") / "net.pt"
    torch.save({"state_dict": trained_small_cnn(30).state_dict(), "epoch": 1}, path)
    return str(path)


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


def base_args(ckpt, out):
    return ["surface", "--model", f"{CONFTEST}:small_cnn", "--checkpoint", ckpt, "--data", "digits:test",
            "--samples", "100", "--out", out, "-q"]


def test_surface_2d_json(tmp_path, ckpt):
    out = tmp_path / "s.h5"
    r = run(*base_args(ckpt, out), "--x=-1:1:5", "--y=-1:1:3", "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    for key in ("file", "min_loss", "min_at", "center_loss", "seconds", "points_x_samples_per_s"):
        assert key in s, key
    assert s["points_done"] == 15 and s["samples"] == 100 and s["file"] == str(out)
    surf = load_surface(str(out))
    assert s["center_loss"] == pytest.approx(surf.loss[2, 1])
    assert s["min_loss"] == pytest.approx(np.nanmin(surf.loss))


def test_surface_1d_interpolation_and_plot(tmp_path, ckpt):
    other = tmp_path / "other.pt"
    from tests.conftest import small_cnn

    torch.save(small_cnn().state_dict(), other)
    out = tmp_path / "i.h5"
    r = run(*base_args(ckpt, out), "--model2", other, "--x=0:1:5")
    assert r.exit_code == 0, r.output
    assert "min loss" in r.output and "points x samples/s" in r.output
    with h5py.File(out) as f:
        assert f.attrs["kind"] == "interpolation" and f["train_loss"].shape == (5,)
    png = tmp_path / "i.png"
    r = run("plot", out, "--out", png)
    assert r.exit_code == 0 and png.stat().st_size > 1000


def test_plot_kinds_from_cli(tmp_path, ckpt):
    dirs = tmp_path / "dirs.h5"
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    for out in (a, b):
        assert run(*base_args(ckpt, out), "--x=-1:1:4", "--y=-1:1:4", "--dir-file", dirs).exit_code == 0
    for out, extra in (("c.png", []), ("s3.png", ["--kind", "surface3d", "--log"]), ("s.html", []),
                       ("h.pdf", ["--kind", "heatmap", "--metric", "err"]), ("cmp.png", ["--kind", "compare"])):
        files = [a, b] if out == "cmp.png" else [a]
        r = run("plot", *files, "--out", tmp_path / out, *extra)
        assert r.exit_code == 0, r.output
        assert (tmp_path / out).stat().st_size > 1000
    r = run("plot", a, b, "--out", tmp_path / "x.png", "--kind", "heatmap")
    assert r.exit_code == 1 and "--kind compare" in r.output
    for levels in ("abc", "nan", "0:1:0", "0:1:1e-300", "99999999999999999999"):  # bad options: exit 2, named
        r = run("plot", a, "--out", tmp_path / "x.png", "--levels", levels)
        assert r.exit_code == 2 and "Cannot read levels" in r.output and "--levels" in r.output, r.output
    r = run("plot", tmp_path / "missing.h5", "--out", tmp_path / "x.png")
    assert r.exit_code == 1 and "Cannot read surface file" in r.output


def test_dir_file_written_then_reused(tmp_path, ckpt):
    dirs = tmp_path / "dirs.h5"
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    assert run(*base_args(ckpt, a), "--x=-1:1:3", "--y=-1:1:3", "--dir-file", dirs, "--seed", "4").exit_code == 0
    assert dirs.exists()
    # a different --seed is ignored when the direction file exists: same axes
    assert run(*base_args(ckpt, b), "--x=-1:1:3", "--y=-1:1:3", "--dir-file", dirs, "--seed", "9").exit_code == 0
    sa, sb = load_surface(str(a)), load_surface(str(b))
    assert sa.attrs["directions"] == sb.attrs["directions"]
    np.testing.assert_allclose(sa.loss, sb.loss, rtol=1e-5)  # auto may pick loop or vmap each time


@pytest.mark.parametrize("args,code,needle", [
    (["--x=1:2"], 2, "MIN:MAX:NUM"),
    (["--y=a:b:c"], 2, "MIN:MAX:NUM"),
    (["--xnorm", "l3"], 2, "l3"),
    (["--data", "mnist"], 1, "Unknown data spec"),
    (["--data", "npz:/nonexistent.npz"], 1, "Cannot read data file"),
    (["--device", "cuda:7"], 1, "evice") if not torch.cuda.is_available() else (["--device", "cuda:99"], 1, "evice"),
    (["--device", "tpu"], 2, "not a device lossgrid runs on"),
    (["--loss", "no_such_mod_xyz:fn"], 1, "Cannot import module"),
    (["--dir-file", "/nonexistent/dirs.h5"], 1, "Cannot write direction file"),
])
def test_bad_options(tmp_path, ckpt, args, code, needle):
    r = run(*base_args(ckpt, tmp_path / "s.h5"), *args)
    assert r.exit_code == code, r.output
    assert needle in r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "s.h5").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a CUDA GPU")
@pytest.mark.parametrize("args,needle", [
    (["--device", "cuda"], "no CUDA GPU is usable here"),
    (["--precision", "tf32"], "TF32 is a mode of NVIDIA tensor cores"),
])
def test_gpu_options_without_a_gpu_fail_with_a_hint(tmp_path, ckpt, args, needle):
    r = run(*base_args(ckpt, tmp_path / "s.h5"), *args)
    assert r.exit_code == 1, r.output
    assert needle in r.output and "Hint:" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "s.h5").exists()
    if "--device" in args:
        assert "lossgrid[gpu]" in r.output


def test_backend_tensorrt_without_tensorrt_names_nvidia(tmp_path, ckpt, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as if TensorRT were not installed
    r = run(*base_args(ckpt, tmp_path / "s.h5"), "--backend", "tensorrt")
    assert r.exit_code == 1, r.output
    assert "TensorRT" in r.output and "NVIDIA" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "s.h5").exists()


@pytest.mark.cpu_bf16
def test_static_strategy_in_bf16_records_its_precision(tmp_path, ckpt):
    out = tmp_path / "s.h5"
    r = run(*base_args(ckpt, out), "--x=-1:1:3", "--strategy", "static", "--precision", "bf16", "--json")
    assert r.exit_code == 0, r.output
    surf = load_surface(str(out))
    assert surf.attrs["precision"] == "bf16"
    with h5py.File(out) as f:
        check = json.loads(f.attrs["runs"])[-1]["precision_check"]
    assert check["precision"] == "bf16" and check["points"] == 3 and 0 < check["max_rel_loss_error"] < 0.05


def test_bad_checkpoint_and_model(tmp_path, ckpt):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    r = run("surface", "--model", f"{CONFTEST}:small_cnn", "--checkpoint", bad, "--out", tmp_path / "s.h5")
    assert r.exit_code == 1 and "corrupt" in r.output and "Traceback" not in r.output
    r = run("surface", "--model", "lossgrid.zoo:mlp_digits", "--checkpoint", ckpt, "--out", tmp_path / "s.h5")
    assert r.exit_code == 1 and "does not match" in r.output and ": 1.weight" in r.output
    assert "not in the model: conv1.weight" in r.output
    r = run("surface", "--model", "lossgrid.zoo:resnet20", "--data", "digits", "--samples", "10",
            "--x=-1:1:2", "--out", tmp_path / "s.h5", "-q")
    assert r.exit_code == 1 and "fail on the first samples of the data" in r.output and "[N, 1, 8, 8]" in r.output
    r = run("surface", "--model", "lossgrid.zoo:mlp_digits", "--out", tmp_path / "nodir" / "s.h5")
    assert r.exit_code == 1 and "does not exist" in r.output


def test_user_loss_and_progress_bar(tmp_path, ckpt):
    src = tmp_path / "myloss.py"
    src.write_text("import torch\ndef doubled(out, y):\n"
                   "    return 2 * torch.nn.functional.cross_entropy(out, y, reduction='none')\n")
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    args = [a for a in base_args(ckpt, a) if a != "-q"]
    r = run(*args, "--x=-1:1:3", "--strategy", "loop")
    assert r.exit_code == 0 and "surface" in r.output  # the progress bar's label
    r = run(*base_args(ckpt, b), "--x=-1:1:3", "--strategy", "loop", "--loss", f"{src}:doubled")
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(load_surface(str(b)).loss, 2 * load_surface(str(a)).loss, rtol=1e-6)


def test_existing_surface_is_never_destroyed(tmp_path, ckpt):
    out = tmp_path / "s.h5"
    assert run(*base_args(ckpt, out), "--x=-1:1:3").exit_code == 0
    before = out.read_bytes()
    for extra in (["--x=-1:1:5"], ["--x=-1:1:5", "--data", "mnist", "--overwrite"],
                  ["--x=-1:1:5", "--checkpoint", tmp_path / "missing.pt", "--overwrite"]):
        r = run(*base_args(ckpt, out), *extra)
        assert r.exit_code == 1 and "Traceback" not in r.output, r.output
        assert out.read_bytes() == before
    r = run(*base_args(ckpt, out), "--x=-1:1:3")  # same settings: resume (nothing to do)
    assert r.exit_code == 0 and "0 points in" in r.output
    r = run(*base_args(ckpt, out), "--x=-1:1:5", "--overwrite")
    assert r.exit_code == 0 and load_surface(str(out)).loss.shape == (5,)


def test_corrupt_surface_file(tmp_path, ckpt):
    out = tmp_path / "s.h5"
    out.write_bytes(b"corrupt")
    r = run(*base_args(ckpt, out))
    assert r.exit_code == 1 and "is not an HDF5 file" in r.output and out.read_bytes() == b"corrupt"
    r = run("plot", out, "--out", tmp_path / "p.png")
    assert r.exit_code == 1 and "Cannot read surface file" in r.output


def test_demo_small(tmp_path):
    r = run("demo", "--out", tmp_path / "d", "--grid=-1:1:5", "--epochs", "2", "--json", "-q")
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    for key in ("surface", "contour", "surface3d", "html"):
        assert os.path.getsize(result["paths"][key]) > 1000, key
    assert result["summary"]["points_done"] == 25
    r = run("demo", "--out", tmp_path / "d2", "--grid=1:0:5")
    assert r.exit_code == 2


def _hashes(folder):
    import hashlib

    return {os.path.relpath(os.path.join(root, n), folder): hashlib.sha256(open(os.path.join(root, n), "rb").read())
            .hexdigest() for root, _, names in os.walk(folder) for n in names}


def test_demo_never_replaces_an_earlier_demo_without_overwrite_nor_before_it_has_results(tmp_path, monkeypatch):
    import lossgrid.demo

    real = lossgrid.demo.load_data
    monkeypatch.setattr(lossgrid.demo, "load_data", lambda spec: real(spec, samples=200))  # seconds, not minutes
    out = tmp_path / "d"
    assert run("demo", "--out", out, "--grid=-1:1:3", "--epochs", "1", "-q").exit_code == 0
    (out / "notes.txt").write_text("mine")
    before = _hashes(out)
    r = run("demo", "--out", out, "--grid=-1:1:3", "--epochs", "1", "-q")
    assert r.exit_code == 1 and "already holds a demo" in r.output and "--overwrite" in r.output
    assert "Traceback" not in r.output and _hashes(out) == before

    def broken(*args, **kwargs):
        from lossgrid.errors import LossgridError

        raise LossgridError("Cannot write plot contour.png", "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(lossgrid.demo, "plot_surface", broken)  # the new demo fails after its surface
        r = run("demo", "--out", out, "--grid=-1:1:3", "--epochs", "1", "--seed", "1", "-q", "--overwrite")
    assert r.exit_code == 1 and "No space left" in r.output and "Traceback" not in r.output
    assert _hashes(out) == before  # the old demo whole, no debris of the new one
    r = run("demo", "--out", out, "--grid=-1:1:3", "--epochs", "1", "--seed", "1", "-q", "--overwrite", "--json")
    assert r.exit_code == 0, r.output
    after = _hashes(out)
    assert after["notes.txt"] == before["notes.txt"] and after["model.pt"] != before["model.pt"]
    assert sorted(after) == sorted(before) and json.loads(r.output)["paths"]["surface"] == str(out / "surface.h5")


def test_export_and_inspect(tmp_path, ckpt):
    out = tmp_path / "m.onnx"
    r = run("export", "--model", f"{CONFTEST}:small_cnn", "--checkpoint", ckpt, "--out", out,
            "--points-per-call", "4", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["points_per_call"] == 4 and summary["max_abs_diff"] < 1e-4 and summary["folded_batchnorms"] == 2
    r = run("inspect", out)
    assert r.exit_code == 0 and json.loads(r.output)["k"] == 4
    import onnx

    proto = onnx.load(str(out))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    r = run("inspect", tmp_path / "bare.onnx")
    assert r.exit_code == 1 and "no lossgrid manifest" in r.output and "lossgrid export" in r.output
    r = run("export", "--model", "lossgrid.zoo:mlp_digits", "--checkpoint", ckpt, "--out", tmp_path / "m2.onnx")
    assert r.exit_code == 1 and "does not match" in r.output
    before = out.read_bytes()  # an existing export is replaced only with --overwrite; other files never
    r = run("export", "--model", f"{CONFTEST}:small_cnn", "--checkpoint", ckpt, "--out", out)
    assert r.exit_code == 1 and "--overwrite" in r.output and out.read_bytes() == before
    notes = tmp_path / "notes.onnx"
    notes.write_text("mine")
    r = run("export", "--model", f"{CONFTEST}:small_cnn", "--checkpoint", ckpt, "--out", notes, "--overwrite")
    assert r.exit_code == 1 and "not an ONNX export of lossgrid's" in r.output and notes.read_text() == "mine"
    r = run("export", "--model", f"{CONFTEST}:small_cnn", "--checkpoint", ckpt, "--out", out, "--overwrite")
    assert r.exit_code == 0, r.output


def test_surface_onnxruntime_and_auto_backends(tmp_path, ckpt):
    ref, ort_path, auto = tmp_path / "t.h5", tmp_path / "o.h5", tmp_path / "a.h5"
    assert run(*base_args(ckpt, ref), "--x=-1:1:4", "--strategy", "loop").exit_code == 0
    r = run(*base_args(ckpt, ort_path), "--x=-1:1:4", "--backend", "onnxruntime", "--strategy", "baked")
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(load_surface(str(ort_path)).loss, load_surface(str(ref)).loss, rtol=1e-4)
    r = run(*base_args(ckpt, auto), "--x=-1:1:4", "--backend", "auto", "--points-per-call", "1")
    assert r.exit_code == 0 and "too small to repay timing" in r.output
    r = run(*base_args(ckpt, tmp_path / "a2.h5"), "--x=-1:1:4", "--backend", "auto", "--auto-budget", "1000",
            "--points-per-call", "2")
    assert r.exit_code == 0 and "fastest when timed" in r.output
    r = run(*base_args(ckpt, auto), "--x=-1:1:4", "--backend", "onnxruntime", "--strategy", "loop", "--overwrite")
    assert r.exit_code == 1 and "does not belong" in r.output


def test_reexec_decision():
    env = {}
    assert _should_reexec(["lossgrid", "surface", "--out", "x"], env) in (True, False)
    assert not _should_reexec(["lossgrid", "plot", "f.h5"], env)
    assert not _should_reexec(["lossgrid", "surface", "--help"], env)
    assert not _should_reexec(["lossgrid", "surface"], {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1"})
    assert not _should_reexec(["lossgrid", "demo"], {"LOSSGRID_NO_MALLOC_TUNING": "1"})


def test_curvature_surface_and_its_plot(tmp_path, ckpt):
    out = tmp_path / "c.h5"
    r = run(*base_args(ckpt, out), "--x=-0.5:0.5:2", "--y=-0.5:0.5:2", "--curvature", "--curvature-iters", "6")
    assert r.exit_code == 0, r.output
    assert "curvature: max_eig up to" in r.output
    surf = load_surface(str(out))
    assert np.isfinite(surf.extra["max_eig"]).all() and np.isfinite(surf.extra["min_eig"]).all()
    r = run("plot", out, "--kind", "curvature", "--out", tmp_path / "convexity.png")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "convexity.png").read_bytes()[:4] == b"\x89PNG"
    plain = tmp_path / "plain.h5"
    assert run(*base_args(ckpt, plain), "--x=-0.5:0.5:2").exit_code == 0
    r = run("plot", plain, "--kind", "curvature", "--out", tmp_path / "no.png")
    assert r.exit_code == 1 and "holds no curvature" in r.output and "--curvature" in r.output
    assert not (tmp_path / "no.png").exists() and "Traceback" not in r.output
    one_d = tmp_path / "c1.h5"
    assert run(*base_args(ckpt, one_d), "--x=-0.5:0.5:3", "--curvature", "--curvature-iters", "4").exit_code == 0
    r = run("plot", one_d, "--kind", "curvature", "--out", tmp_path / "c1.png")
    assert r.exit_code == 0, r.output


def test_hessian_directions_from_the_cli(tmp_path, ckpt):
    out = tmp_path / "h.h5"
    r = run(*base_args(ckpt, out), "--x=-0.2:0.2:3", "--y=-0.2:0.2:3", "--dir-kind", "hessian",
            "--dir-file", tmp_path / "dirs.h5")
    assert r.exit_code == 0, r.output
    surf = load_surface(str(out))
    assert surf.attrs["kind"] == "hessian" and len(surf.attrs["eigenvalues"]) == 2
    assert surf.attrs["eigenvalues"][0] >= surf.attrs["eigenvalues"][1]
    r = run(*base_args(ckpt, tmp_path / "i.h5"), "--dir-kind", "hessian", "--model2", ckpt, "--x=0:1:3")
    assert r.exit_code == 1 and "--model2" in r.output and "Traceback" not in r.output


def test_demo_trajectory(tmp_path):
    out = tmp_path / "t"
    r = run("demo", "--trajectory", "--out", out, "--epochs", "3", "--grid", "5", "--json", "-q")
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    for name in ("trajectory.png", "trajectory.h5", "trajectory_surface.h5"):
        assert (out / name).stat().st_size > 1000, name
    assert sorted(os.listdir(out / "checkpoints")) == [f"epoch_{e:04d}.pt" for e in range(4)]
    assert result["checkpoints"] == 4 and len(result["tracked"]) == 4 and len(result["path_losses"]) == 4
    assert result["summary"]["shape"] == [5, 5] and result["summary"]["points_done"] == 25
    assert sum(result["explained_variance_ratio"]) <= 1 + 1e-9
    assert result["final_loss"] < result["path_losses"][0]  # it trained
    from lossgrid.models import load_model
    from lossgrid.trajectory.compute import load_trajectory

    model, _ = load_model("lossgrid.zoo:resnet_digits", str(out / "checkpoints" / "epoch_0003.pt"))
    traj = load_trajectory(out / "trajectory.h5", model)
    assert np.allclose(traj.coords[-1], 0.0) and load_surface(str(out / "trajectory_surface.h5")).attrs[
        "directions"] == traj.directions.fingerprint()
    r = run("demo", "--trajectory", "--out", tmp_path / "u", "--epochs", "1")
    assert r.exit_code == 2 and "2 epochs or more" in r.output
    r = run("demo", "--trajectory", "--out", tmp_path / "u", "--grid", "1")
    assert r.exit_code == 2 and "--grid" in r.output
