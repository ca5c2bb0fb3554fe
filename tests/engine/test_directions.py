import h5py
import pytest
import torch

from lossgrid.config import DirectionSpec
from lossgrid.engine.directions import load_directions, save_directions
from lossgrid.engine.params import ParamLayout
from lossgrid.errors import DirectionError
from lossgrid.surface.directions import create_directions
from tests.conftest import small_cnn


def test_same_seed_bit_identical_and_other_seed_differs(trained_cnn):
    a = create_directions(trained_cnn, DirectionSpec(seed=5), ndim=2)
    b = create_directions(trained_cnn, DirectionSpec(seed=5), ndim=2)
    c = create_directions(trained_cnn, DirectionSpec(seed=6), ndim=2)
    assert torch.equal(a.flat(), b.flat())
    assert not torch.equal(a.flat(), c.flat())
    # x of a 2D surface is the direction of the 1D curve with the same seed
    one = create_directions(trained_cnn, DirectionSpec(seed=5), ndim=1)
    assert one.y is None and torch.equal(one.flat()[0], a.flat()[0])


def test_directions_on_model_device_and_dtype(trained_cnn):
    dirs = create_directions(trained_cnn, DirectionSpec(), ndim=2)
    for d, p in zip(dirs.x + dirs.y, list(trained_cnn.parameters()) * 2):
        assert d.device == p.device and d.dtype == p.dtype and d.shape == p.shape


def test_a_seed_draws_the_cpu_generators_stream():
    """Directions are the seeded CPU generator's values, normalized: on a GPU they are drawn the same
    way and then moved (the gpu twin in test_device.py compares a CUDA model's directions bit for bit)."""
    model = small_cnn()
    dirs = create_directions(model, DirectionSpec(seed=4, xnorm="none", xignore="none"), ndim=1)
    gen = torch.Generator().manual_seed(4)
    expected = [torch.randn(p.shape, generator=gen) for p in model.parameters()]
    assert all(torch.equal(d, e) for d, e in zip(dirs.x, expected))


def test_filter_normalization_and_biasbn_ignored(trained_cnn):
    dirs = create_directions(trained_cnn, DirectionSpec(), ndim=2)
    for name, d, w in zip(dirs.layout.names, dirs.x, trained_cnn.parameters()):
        if w.dim() <= 1:
            assert torch.all(d == 0), name
        else:
            torch.testing.assert_close(d.flatten(1).norm(dim=1), w.detach().flatten(1).norm(dim=1),
                                       rtol=1e-5, atol=1e-6)


def test_ignore_none_keeps_1d_directions(trained_cnn):
    dirs = create_directions(trained_cnn, DirectionSpec(xignore="none"), ndim=1)
    bias = dict(zip(dirs.layout.names, dirs.x))["fc.bias"]
    assert torch.all(bias != 0)
    # scalar filters: each entry has the magnitude of the matching weight
    torch.testing.assert_close(bias.abs(), trained_cnn.fc.bias.detach().abs())


def test_y_settings_default_to_x_and_can_differ(trained_cnn):
    same = create_directions(trained_cnn, DirectionSpec(xnorm="layer", xignore="none"), ndim=2)
    assert same.meta["ynorm"] == "layer" and same.meta["yignore"] == "none"
    diff = create_directions(trained_cnn, DirectionSpec(xnorm="layer", ynorm="none"), ndim=2)
    w = trained_cnn.conv1.weight.detach()
    ydir = dict(zip(diff.layout.names, diff.y))["conv1.weight"]
    xdir = dict(zip(diff.layout.names, diff.x))["conv1.weight"]
    assert torch.isclose(xdir.norm(), w.norm()) and not torch.isclose(ydir.norm(), w.norm())


def test_states_type_covers_running_stats_not_integer_buffers(trained_cnn):
    dirs = create_directions(trained_cnn, DirectionSpec(dir_type="states", xignore="none"), ndim=1)
    names = dirs.layout.names
    assert "bn1.running_mean" in names and "bn1.running_var" in names
    assert not any(n.endswith("num_batches_tracked") for n in names)
    assert list(names) == [n for n, t in trained_cnn.state_dict().items() if torch.is_floating_point(t)]
    weights_only = ParamLayout.from_model(trained_cnn, "weights")
    assert "bn1.running_mean" not in weights_only.names


def test_interpolation_direction(trained_cnn):
    other = small_cnn()
    dirs = create_directions(trained_cnn, DirectionSpec(), ndim=1, model2=other)
    for d, a, b in zip(dirs.x, trained_cnn.parameters(), other.parameters()):
        torch.testing.assert_close(d, b.detach() - a.detach())
    assert dirs.meta["kind"] == "interpolation"
    with pytest.raises(DirectionError, match="does not match"):
        create_directions(trained_cnn, DirectionSpec(), ndim=1, model2=torch.nn.Linear(2, 2))


def test_an_interpolation_of_weights_warns_when_batchnorm_statistics_differ(caplog):
    """x=1 of a weights interpolation is not the second model when its running statistics differ: said once,
    with the way out; states interpolations and models with equal statistics say nothing."""
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    b = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    with caplog.at_level("WARNING", logger="lossgrid.engine.directions"):
        create_directions(a, DirectionSpec(), ndim=1, model2=b)  # fresh statistics: equal
        assert caplog.records == []
        b.train()(torch.randn(8, 3))  # b's running statistics move
        create_directions(a, DirectionSpec(dir_type="states"), ndim=1, model2=b)
        assert caplog.records == []
        create_directions(a, DirectionSpec(), ndim=1, model2=b)
    (record,) = caplog.records
    assert "1.running_mean, 1.running_var" in record.getMessage() and "--dir-type states" in record.getMessage()


def test_save_load_roundtrip_reference_layout(tmp_path, trained_cnn):
    dirs = create_directions(trained_cnn, DirectionSpec(seed=3), ndim=2)
    path = tmp_path / "dirs.h5"
    save_directions(path, dirs)
    with h5py.File(path) as f:
        assert set(f) == {"xdirection", "ydirection"}
        assert list(f["xdirection"].attrs["names"]) == list(dirs.layout.names)
        assert sorted(f["xdirection"], key=int) == [str(i) for i in range(len(dirs.x))]
    loaded = load_directions(path, trained_cnn)
    assert torch.equal(loaded.flat(), dirs.flat())
    one = load_directions(path, trained_cnn, ndim=1)
    assert one.y is None and torch.equal(one.flat()[0], dirs.flat()[0])


def test_load_errors(tmp_path, trained_cnn):
    dirs = create_directions(trained_cnn, DirectionSpec(), ndim=1)
    path = tmp_path / "one.h5"
    save_directions(path, dirs)
    with pytest.raises(DirectionError, match="two"):
        load_directions(path, trained_cnn, ndim=2)
    with pytest.raises(DirectionError, match="does not match"):
        load_directions(path, torch.nn.Linear(3, 3))
    with pytest.raises(DirectionError, match="states"):
        load_directions(path, trained_cnn, dir_type="states")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(DirectionError, match="Cannot read"):
        load_directions(bad, trained_cnn)


def test_hessian_directions_are_the_top_eigenvectors_and_keep_their_eigenvalues(tmp_path):
    import numpy as np
    import torch
    from torch import nn

    from lossgrid.config import DirectionSpec, GridSpec
    from lossgrid.data import load_data
    from lossgrid.engine.directions import load_directions, save_directions
    from lossgrid.errors import DirectionError
    from lossgrid.hessian.operator import hessian_operator, lanczos_eigs
    from lossgrid.surface.compute import compute_surface
    from lossgrid.surface.directions import create_directions

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.Tanh(), nn.Linear(6, 10))
    data = load_data("digits", samples=120)
    spec = DirectionSpec(xnorm="none", xignore="none", seed=4, kind="hessian")
    dirs = create_directions(model, spec, 2, data=data)
    eig = lanczos_eigs(hessian_operator(model, data), k=2, seed=4)
    assert dirs.meta["kind"] == "hessian"
    np.testing.assert_allclose(dirs.meta["eigenvalues"], eig.values, rtol=1e-6)
    flat = dirs.flat().double()
    np.testing.assert_allclose(flat.norm(dim=1).numpy(), [1.0, 1.0], rtol=1e-5)  # "none": unit eigenvectors
    assert abs(float(flat[0] @ eig.vectors[0].to(flat))) > 0.999
    # along the top eigenvector the loss curves with the top eigenvalue: L'' = lambda_1
    h = 0.02
    curve = compute_surface(model, data, GridSpec.parse(f"{-h}:{h}:3"), directions=create_directions(
        model, spec, 1, data=data))
    second = (curve.loss[0] - 2 * curve.loss[1] + curve.loss[2]) / h**2
    assert second == pytest.approx(eig.values[0], rel=0.02)
    # stored and read back with the eigenvalues; filter normalization applies on request
    save_directions(tmp_path / "d.h5", dirs)
    back = load_directions(tmp_path / "d.h5", model)
    np.testing.assert_allclose(back.meta["eigenvalues"], dirs.meta["eigenvalues"])
    filt = create_directions(model, DirectionSpec(seed=4, kind="hessian"), 2, data=data)
    w = model[1].weight.detach()
    np.testing.assert_allclose(filt.x[0].norm(dim=1).numpy(), w.norm(dim=1).numpy(), rtol=1e-4)
    assert filt.x[1].abs().sum() == 0  # biasbn: the bias gets no direction
    with pytest.raises(DirectionError, match="--model2"):
        create_directions(model, spec, 1, model2=model, data=data)
