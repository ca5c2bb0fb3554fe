import subprocess
import sys

import pytest
from click.testing import CliRunner

from lossgrid.cli.group import cli
from lossgrid.errors import MissingBackendError


def test_import_is_light():
    code = ("import sys, lossgrid; heavy = [m for m in ('torch', 'h5py', 'matplotlib', 'click', 'cupy', "
            "'tensorrt', 'onnxruntime') if m in sys.modules]; print(heavy); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lazy_exports_resolve():
    import lossgrid

    for name in lossgrid.__all__:
        assert getattr(lossgrid, name) is not None
    with pytest.raises(AttributeError):
        lossgrid.no_such_name  # noqa: B018


@pytest.mark.parametrize("args", [[], ["surface"], ["plot"], ["demo"], ["export"], ["inspect"], ["bench"],
                                  ["hessian"], ["audit"], ["evolve"], ["trajectory"], ["demo", "--trajectory"],
                                  ["train"], ["gallery"], ["zoo"]])
def test_help_works(args):
    result = CliRunner().invoke(cli, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "lossgrid.cli", "--help"], capture_output=True, text=True, check=True)
    assert "surface" in out.stdout and "demo" in out.stdout


def test_missing_backend_error_names_extra():
    from lossgrid._optional import require

    with pytest.raises(MissingBackendError) as e:
        require("lossgrid_no_such_backend", "gpu", "The CuPy kernels")
    msg = str(e.value)
    assert 'pip install "lossgrid[gpu]"' in msg and "lossgrid_no_such_backend" in msg


def test_a_cpu_surface_imports_no_gpu_package():
    code = ("import sys, torch, lossgrid; data = lossgrid.load_data('digits', samples=32); "
            "model, _ = lossgrid.load_model('lossgrid.zoo:mlp_digits'); "
            "lossgrid.compute_surface(model, data, lossgrid.GridSpec.parse('-1:1:3'), "
            "eval_spec=lossgrid.EvalSpec(backend='auto', auto_budget=1e6)); "
            "heavy = [m for m in ('cupy', 'tensorrt') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
