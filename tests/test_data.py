import pickle

import numpy as np
import pytest
import torch

from lossgrid.data import CIFAR_MEAN, CIFAR_STD, load_data
from lossgrid.errors import DataLoadError


def test_digits_splits():
    full, train, test = load_data("digits"), load_data("digits:train"), load_data("digits:test")
    assert full.x.shape == (1797, 1, 8, 8) and full.x.dtype == torch.float32 and full.y.dtype == torch.int64
    assert len(train) + len(test) == 1797 and len(train) == 1437
    assert 0.0 <= float(full.x.min()) and float(full.x.max()) <= 1.0


def test_samples_subset_is_seeded():
    a, b = load_data("digits", samples=50, sample_seed=1), load_data("digits", samples=50, sample_seed=1)
    c = load_data("digits", samples=50, sample_seed=2)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    assert "50 of 1797" in a.description
    with pytest.raises(DataLoadError, match="between 1 and 1797"):
        load_data("digits", samples=5000)


def test_npz(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.random.rand(10, 3).astype(np.float64), y=np.arange(10) % 3)
    data = load_data(f"npz:{path}")
    assert data.x.dtype == torch.float32 and data.y.dtype == torch.int64 and len(data) == 10
    np.savez(tmp_path / "bad.npz", inputs=np.zeros(3))
    with pytest.raises(DataLoadError, match="no array 'x'"):
        load_data(f"npz:{tmp_path / 'bad.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataLoadError, match="Cannot read"):
        load_data(f"npz:{tmp_path / 'junk.npz'}")
    with pytest.raises(DataLoadError):
        load_data(f"npz:{tmp_path / 'missing.npz'}")
    np.savez(tmp_path / "mism.npz", x=np.zeros((3, 2)), y=np.zeros(4))
    with pytest.raises(DataLoadError, match="same"):
        load_data(f"npz:{tmp_path / 'mism.npz'}")


def test_cifar10_matches_the_reference_normalization_bit_for_bit(tmp_path):
    """What the reference code feeds its models: torchvision's ToTensor (uint8 HWC -> float32 CHW / 255)
    then Normalize with mean (125.3, 123.0, 113.9)/255 and std (63.0, 62.1, 66.7)/255, in float32."""
    batch = _write_cifar_batch(tmp_path / "test_batch", 6, 3)
    images = batch[b"data"].reshape(-1, 3, 32, 32)
    mean = torch.tensor([125.3 / 255, 123.0 / 255, 113.9 / 255], dtype=torch.float32)[:, None, None]
    std = torch.tensor([63.0 / 255, 62.1 / 255, 66.7 / 255], dtype=torch.float32)[:, None, None]
    want = []
    for img in images:
        hwc = torch.from_numpy(np.ascontiguousarray(img.transpose(1, 2, 0)))  # what PIL hands ToTensor
        t = hwc.permute(2, 0, 1).contiguous().to(torch.float32).div(255)  # ToTensor
        want.append(t.sub(mean).div(std))  # Normalize
    got = load_data(f"cifar10:{tmp_path}:test")
    assert got.x.dtype == torch.float32
    assert torch.equal(got.x, torch.stack(want))
    assert got.y.tolist() == list(batch[b"labels"])
    # other constants, by name or by value
    plain = load_data(f"cifar10:{tmp_path}:test:norm=none").x
    assert torch.equal(plain, torch.from_numpy(images).float() / 255)
    named = load_data(f"cifar10:{tmp_path}:test:norm=dataset").x
    explicit = load_data(f"cifar10:{tmp_path}:test:norm=0.4914,0.4822,0.4465/0.2470,0.2435,0.2616").x
    assert torch.equal(named, explicit) and not torch.equal(named, got.x)
    for bad in ("norm=imagenet", "norm=1,2/3,4", "norm=0,0,0/1,0,1", "valid"):
        with pytest.raises(DataLoadError, match="normalization|Unknown CIFAR-10 option"):
            load_data(f"cifar10:{tmp_path}:test:{bad}")


def _write_cifar_batch(path, n, seed):
    rng = np.random.RandomState(seed)
    batch = {b"data": rng.randint(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.randint(0, 10, n))}
    with open(path, "wb") as f:
        pickle.dump(batch, f)
    return batch


def test_cifar10_python_batches(tmp_path):
    batches = [_write_cifar_batch(tmp_path / f"data_batch_{i}", 4, i) for i in range(1, 6)]
    test = _write_cifar_batch(tmp_path / "test_batch", 3, 9)
    data = load_data(f"cifar10:{tmp_path}")
    assert data.x.shape == (20, 3, 32, 32) and data.y.tolist() == sum((list(b[b"labels"]) for b in batches), [])
    first = batches[0][b"data"][0].reshape(3, 32, 32) / 255.0
    want = (first - np.array(CIFAR_MEAN)[:, None, None]) / np.array(CIFAR_STD)[:, None, None]
    np.testing.assert_allclose(data.x[0].numpy(), want, rtol=1e-5, atol=1e-5)
    assert len(load_data(f"cifar10:{tmp_path}:test")) == 3 and test
    with pytest.raises(DataLoadError, match="Cannot read CIFAR-10"):
        load_data(f"cifar10:{tmp_path / 'nope'}")


def test_module_function_tuple_and_dataset(tmp_path):
    src = tmp_path / "mydata.py"
    src.write_text(
        "import torch\n"
        "def pairs():\n    return torch.randn(6, 2), torch.tensor([0, 1, 0, 1, 0, 1])\n"
        "class DS(torch.utils.data.Dataset):\n"
        "    def __len__(self): return 5\n"
        "    def __getitem__(self, i): return torch.full((3,), float(i)), i % 2\n"
        "def dataset():\n    return DS()\n"
        "def broken():\n    raise RuntimeError('boom')\n"
        "def wrong():\n    return 42\n"
    )
    assert len(load_data(f"{src}:pairs")) == 6
    ds = load_data(f"{src}:dataset")
    assert ds.x.shape == (5, 3) and ds.y.tolist() == [0, 1, 0, 1, 0]
    with pytest.raises(DataLoadError, match="boom"):
        load_data(f"{src}:broken")
    with pytest.raises(DataLoadError, match="returned int"):
        load_data(f"{src}:wrong")
    with pytest.raises(DataLoadError, match="no attribute"):
        load_data(f"{src}:missing")


@pytest.mark.parametrize("spec", ["mnist", "imagenet", "no_such_module_xyz:fn"])
def test_unknown_specs(spec):
    with pytest.raises(DataLoadError):
        load_data(spec)


def test_synthetic_data_is_seeded_and_checked():
    from lossgrid.data import load_data
    from lossgrid.errors import DataLoadError

    a, b = load_data("synthetic:3x32x32:20"), load_data("synthetic:3x32x32:20")
    assert tuple(a.x.shape) == (20, 3, 32, 32) and a.x.dtype == torch.float32 and a.y.dtype == torch.int64
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and int(a.y.max()) < 10
    flat = load_data("synthetic:784:50:3")
    assert tuple(flat.x.shape) == (50, 784) and set(flat.y.tolist()) <= {0, 1, 2}
    for bad in ("synthetic:3x32x32", "synthetic:axb:5", "synthetic:3x0:5", "synthetic:8:0", "synthetic:99999x99999:9"):
        with pytest.raises(DataLoadError, match="synthetic"):
            load_data(bad)
