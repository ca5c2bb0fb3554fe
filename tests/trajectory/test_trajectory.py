"""Trajectories: PCA against scikit-learn, projections, streaming, files, the surface on the plane."""

import os
import tracemalloc

import numpy as np
import pytest
import torch
from torch import nn

from lossgrid.checkpoints import checkpoint_paths, epoch_of
from lossgrid.config import Axis, DirectionSpec, GridSpec
from lossgrid.data import load_data
from lossgrid.engine.directions import load_directions
from lossgrid.errors import ConfigError, DirectionError
from lossgrid.surface.compute import compute_surface
from lossgrid.trajectory import compute as trajectory_module
from lossgrid.trajectory.compute import (
    check_same_plane,
    compute_trajectory,
    load_trajectory,
    path_grid,
    path_losses,
    save_trajectory,
)
from lossgrid.zoo import mlp_digits


def train_run(directory, epochs=8, model=None, lr=0.1):
    """Train on digits for a few epochs, one state_dict checkpoint per epoch; returns the paths."""
    data = load_data("digits:train")
    torch.manual_seed(0)
    model = model or mlp_digits()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    paths = []
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(data))
        model.train()
        for s in range(0, len(data), 128):
            idx = order[s:s + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(model(data.x[idx]), data.y[idx]).backward()
            opt.step()
        paths.append(str(directory / f"epoch_{epoch}.pt"))
        torch.save(model.state_dict(), paths[-1])
    return paths


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("run"))


def difference_matrix(paths, final, dir_type="weights", ignore="biasbn", factory=mlp_digits):
    """The reference's matrix, built in memory: rows theta_i - theta_final, 1-D tensors zeroed."""
    model = factory()

    def flat(path):
        model.load_state_dict(torch.load(path))
        tensors = (dict(model.named_parameters()) if dir_type == "weights" else
                   {k: v for k, v in model.state_dict().items() if v.is_floating_point()})
        return np.concatenate([np.zeros(t.numel()) if (ignore == "biasbn" and t.dim() <= 1)
                               else t.detach().double().numpy().ravel() for t in tensors.values()])

    base = flat(final)
    return np.stack([flat(p) - base for p in paths])


def assert_matches_sklearn(traj, matrix):
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2).fit(matrix)
    np.testing.assert_allclose(traj.explained_variance_ratio, pca.explained_variance_ratio_, rtol=1e-5)
    np.testing.assert_allclose(traj.directions.meta["explained_variance_ratio"], pca.explained_variance_ratio_,
                               rtol=1e-5)
    mine = traj.directions.flat().double().numpy()
    signs = np.sign(np.sum(mine * pca.components_, axis=1))
    np.testing.assert_allclose(mine * signs[:, None], pca.components_, atol=1e-5)
    np.testing.assert_allclose(traj.coords * signs, matrix @ pca.components_.T, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(mine, axis=1), 1.0, rtol=1e-5)


def test_pca_matches_scikit_learn_and_final_is_the_origin(run):
    model = mlp_digits()
    traj = compute_trajectory(model, run)
    assert traj.paths == run and traj.final == run[-1] and traj.coords.shape == (len(run), 2)
    assert traj.directions.meta["kind"] == "pca" and traj.directions.meta["xnorm"] == "none"
    np.testing.assert_array_equal(traj.coords[-1], [0.0, 0.0])
    assert_matches_sklearn(traj, difference_matrix(run, run[-1]))
    # biasbn: every 1-D tensor of both directions is zero
    for tensors in (traj.directions.x, traj.directions.y):
        assert all(not t.any() for t in tensors if t.dim() <= 1)
    # the model is left at the final checkpoint's weights
    final = torch.load(run[-1])
    assert all(torch.equal(v, final[k]) for k, v in model.state_dict().items())


def test_projection_reconstructs_each_checkpoint_up_to_its_residual(run):
    traj = compute_trajectory(mlp_digits(), run)
    matrix = difference_matrix(run, run[-1])
    plane = traj.directions.flat().double().numpy()
    missed = np.linalg.norm(matrix - traj.coords @ plane, axis=1)
    scale = np.linalg.norm(matrix, axis=1).max()
    np.testing.assert_allclose(traj.residuals, missed, atol=1e-5 * scale)
    assert traj.residuals[-1] == 0.0 and (traj.residuals[:-1] > 0).all()


def test_ignore_none_states_and_a_final_outside_the_list(tmp_path, trained_cnn):
    from tests.conftest import small_cnn

    paths = train_run(tmp_path, epochs=4, model=small_cnn(), lr=0.05)
    final = str(tmp_path / "final.pt")
    torch.save(trained_cnn.state_dict(), final)  # another model: a row of its own, appended
    traj = compute_trajectory(small_cnn(), paths, final=final, dir_type="states", ignore="none")
    assert traj.paths == [*paths, final] and traj.directions.layout.dir_type == "states"
    assert any("running_mean" in n for n in traj.directions.layout.names)
    assert_matches_sklearn(traj, difference_matrix(traj.paths, final, "states", "none", small_cnn))


def test_streaming_holds_a_bounded_number_of_rows(tmp_path, monkeypatch):
    """60 checkpoints of 40k parameters (320 kB as float64 rows, 19 MB in all) with a budget of
    10 rows: peak traced memory stays within it (plus about a row for reading a checkpoint), the
    reads follow the plan (blocks of 4 rows), the result equals the one with every row in memory."""
    torch.manual_seed(0)
    model = nn.Linear(400, 100)
    row = 8 * sum(p.numel() for p in model.parameters())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    paths = []
    for i in range(60):
        state = {k: v + 0.01 * torch.randn_like(v) + (0.002 if i % 2 else 0.0) for k, v in state.items()}
        paths.append(str(tmp_path / f"ckpt_{i}.pt"))
        torch.save(state, paths[-1])
    reads = []
    real = trajectory_module.read_state
    monkeypatch.setattr(trajectory_module, "read_state", lambda p, t=False: reads.append(p) or real(p, t))
    whole = compute_trajectory(nn.Linear(400, 100), paths)
    assert len(reads) == 60  # everything fits: one read per file (the final's row is zero, read once)
    reads.clear()
    calls = []
    tracemalloc.start()
    try:
        streamed = compute_trajectory(nn.Linear(400, 100), paths, memory_bytes=10 * row,
                                      progress=lambda done, total: calls.append((done, total)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 12 * row, f"peak {peak / row:.1f} rows"
    assert calls[-1][0] == calls[-1][1] == len(reads) - 1  # every read but the final's is reported
    assert 59 * 59 / (2 * 4) < len(reads) < 59 * 59 / 4  # about n + n^2/2B reads for blocks of B = 4 rows
    np.testing.assert_allclose(streamed.coords, whole.coords, atol=1e-9)
    np.testing.assert_allclose(streamed.directions.flat(), whole.directions.flat(), atol=1e-7)


def test_checkpoint_paths_natural_sort_and_errors(tmp_path):
    for name in ("epoch_10.pt", "epoch_2.pt", "epoch_1.pt", "init.pt", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    got = checkpoint_paths(str(tmp_path / "epoch_*.pt"))
    assert [os.path.basename(p) for p in got] == ["epoch_1.pt", "epoch_2.pt", "epoch_10.pt"]
    both = checkpoint_paths([str(tmp_path / "epoch_*.pt"), str(tmp_path / "init.pt"), str(tmp_path / "epoch_2.pt")])
    assert [os.path.basename(p) for p in both] == ["init.pt", "epoch_1.pt", "epoch_2.pt", "epoch_10.pt"]
    (tmp_path / "final.pt").write_bytes(b"x")
    named = checkpoint_paths([str(tmp_path / "*.pt")])
    assert [os.path.basename(p) for p in named] == ["init.pt", "epoch_1.pt", "epoch_2.pt", "epoch_10.pt", "final.pt"]
    assert epoch_of("run/model_12.t7") == 12 and epoch_of("final.pt") is None
    with pytest.raises(ConfigError, match="No checkpoint file matches") as e:
        checkpoint_paths(str(tmp_path / "nothing_*.pt"))
    assert "quote the glob" in str(e.value)


def test_too_few_or_collinear_checkpoints_are_refused(run, tmp_path):
    with pytest.raises(ConfigError, match="cannot span a plane"):
        compute_trajectory(mlp_digits(), run[:2])
    a, b = torch.load(run[0]), torch.load(run[-1])
    line = []
    for i, t in enumerate((0.0, 0.5, 1.0)):
        line.append(str(tmp_path / f"line_{i}.pt"))
        torch.save({k: a[k] + t * (b[k] - a[k]) for k in a}, line[-1])
    with pytest.raises(ConfigError, match="lie on a line"):
        compute_trajectory(mlp_digits(), line)


def test_file_round_trip_surface_on_the_plane_and_path_losses(run, tmp_path):
    model = mlp_digits()
    traj = compute_trajectory(model, run)
    path = tmp_path / "traj.h5"
    save_trajectory(path, traj)
    for loaded in (load_trajectory(path), load_trajectory(path, mlp_digits())):
        assert loaded.paths == traj.paths and loaded.final == traj.final
        np.testing.assert_array_equal(loaded.coords, traj.coords)
        np.testing.assert_array_equal(loaded.residuals, traj.residuals)
        assert loaded.directions.fingerprint() == traj.directions.fingerprint()
    dirs = load_directions(path, mlp_digits())  # a plain direction file too
    assert dirs.meta["kind"] == "pca" and dirs.meta["explained_variance_ratio"] == pytest.approx(
        list(traj.explained_variance_ratio))
    x, y = path_grid(traj, margin=0.2, num=11)
    lo, hi = Axis.parse(x), Axis.parse(y)
    assert lo.min <= traj.coords[:, 0].min() and lo.max >= 0 and hi.min <= traj.coords[:, 1].min()
    # a grid whose centre node is the first checkpoint: the path loss there is the surface's
    cx, cy = traj.coords[0]
    grid = GridSpec(Axis(cx - 0.5, cx + 0.5, 3), Axis(cy - 0.5, cy + 0.5, 3))
    data = load_data("digits:test", samples=200)
    surface = compute_surface(model, data, grid, tmp_path / "s.h5", dir_file=path,
                              direction_spec=DirectionSpec(xnorm="none"))
    assert surface.attrs["kind"] == "pca"
    losses = path_losses(model, data, traj, surface=tmp_path / "s.h5")
    assert losses.shape == (len(run),)
    assert losses[0] == pytest.approx(surface.loss[1, 1], rel=1e-5)
    # other data, or a surface on other directions, are refused
    with pytest.raises(ConfigError, match="another data"):
        path_losses(model, load_data("digits:test", samples=100), traj, surface=tmp_path / "s.h5")
    other = compute_surface(model, data, GridSpec(Axis(-1, 1, 3), Axis(-1, 1, 3)))
    with pytest.raises(ConfigError, match="different directions"):
        check_same_plane(other.attrs, traj)
    # the same plane around another model (not the path's origin) is refused too
    early = mlp_digits()
    early.load_state_dict(torch.load(run[1]))
    shifted = compute_surface(early, data, grid, dir_file=path, direction_spec=DirectionSpec(xnorm="none"))
    with pytest.raises(ConfigError, match="not centred on the trajectory's final model"):
        check_same_plane(shifted.attrs, traj)
    # the trajectory file never replaces a file of another kind
    with pytest.raises(DirectionError, match="not a trajectory file"):
        save_trajectory(tmp_path / "s.h5", traj)
    save_trajectory(path, traj)  # its own kind: replaced


def test_a_direction_file_that_is_not_a_trajectory(tmp_path):
    from lossgrid.engine.directions import save_directions
    from lossgrid.surface.directions import create_directions

    save_directions(tmp_path / "d.h5", create_directions(mlp_digits()))
    with pytest.raises(DirectionError, match="not a trajectory file"):
        load_trajectory(tmp_path / "d.h5")
    with pytest.raises(DirectionError, match="does not exist"):
        load_trajectory(tmp_path / "missing.h5")
