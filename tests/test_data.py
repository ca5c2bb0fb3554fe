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
    np.savez(tmp_path / "bad.npz", inputs=np.zeros(3))  # no x: records, but no targets among them
    with pytest.raises(DataLoadError, match="have no targets.*inputs.*labels, label, targets, target, y"):
        load_data(f"npz:{tmp_path / 'bad.npz'}")
    np.savez(tmp_path / "noy.npz", x=np.zeros((3, 2)), labels=np.zeros(3))
    with pytest.raises(DataLoadError, match="no array 'y'"):
        load_data(f"npz:{tmp_path / 'noy.npz'}")
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(DataLoadError, match="holds no arrays"):
        load_data(f"npz:{tmp_path / 'empty.npz'}")
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


# --- records: dicts, longer tuples, datasets of dicts, and the batch adapter -------------------------

def _token_records(n=12, t=5):
    """Rows that say which sample they are: input_ids[i] = 10*i + (0..t-1), labels the next ids, -100 at the end."""
    ids = (10 * np.arange(n)[:, None] + np.arange(t)[None, :]).astype(np.int64)
    mask = np.ones((n, t), dtype=np.float64)
    labels = np.concatenate([ids[:, 1:], np.full((n, 1), -100)], axis=1)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_npz_records_are_split_by_the_convention(tmp_path):
    rec = _token_records()
    np.savez(tmp_path / "tok.npz", **rec)
    data = load_data(f"npz:{tmp_path / 'tok.npz'}")
    assert isinstance(data.x, dict) and list(data.x) == ["input_ids", "attention_mask"] and len(data) == 12
    assert data.x["input_ids"].dtype == torch.int64 and data.x["attention_mask"].dtype == torch.float32
    assert torch.equal(data.x["input_ids"], torch.from_numpy(rec["input_ids"]))
    assert data.y.dtype == torch.int64 and data.y.shape == (12, 5) and int(data.y[0, -1]) == -100
    assert torch.equal(data.y, torch.from_numpy(rec["labels"]))


def test_samples_subset_keeps_dict_inputs_and_targets_together(tmp_path):
    np.savez(tmp_path / "tok.npz", **_token_records(n=40))
    full = load_data(f"npz:{tmp_path / 'tok.npz'}")
    sub = load_data(f"npz:{tmp_path / 'tok.npz'}", samples=7, sample_seed=3)
    assert len(sub) == 7 and "7 of 40 samples, seed 3" in sub.description
    rows = (sub.x["input_ids"][:, 0] // 10).tolist()  # which samples were taken
    assert rows == sorted(rows) and len(set(rows)) == 7
    assert torch.equal(sub.x["input_ids"], full.x["input_ids"][rows])
    assert torch.equal(sub.x["attention_mask"], full.x["attention_mask"][rows])
    assert torch.equal(sub.y, full.y[rows])
    again = load_data(f"npz:{tmp_path / 'tok.npz'}", samples=7, sample_seed=3)
    assert torch.equal(again.x["input_ids"], sub.x["input_ids"])


def test_record_conventions():
    from lossgrid._records import split_records

    a, b, y = np.zeros((3, 2)), np.ones((3, 4)), np.arange(3)
    x, t = split_records({"x": a, "y": y}, "s")  # only x left: one plain tensor input
    assert x is a and t is y
    x, t = split_records({"y": a, "labels": y, "mask": b}, "s")  # labels comes before y
    assert t is y and list(x) == ["y", "mask"]
    x, t = split_records((a, b, y), "s")
    assert x == (a, b) and t is y
    x, t = split_records((a, y), "s")
    assert x is a and t is y
    with pytest.raises(DataLoadError, match="hold only targets"):
        split_records({"target": y}, "s")
    with pytest.raises(DataLoadError, match="tuple of 1"):
        split_records((a,), "s")


def test_module_function_returning_records(tmp_path):
    src = tmp_path / "recs.py"
    src.write_text(
        "import numpy as np, torch\n"
        "ids = torch.arange(24).reshape(6, 4)\n"
        "def records():\n    return {'input_ids': ids, 'attention_mask': torch.ones(6, 4), 'label': np.arange(6) % 2}\n"
        "def dict_and_targets():\n    return {'ids': ids}, torch.randn(6).double()\n"
        "def tuple_and_targets():\n    return (ids, ids.float()), np.arange(6)\n"
        "def triple():\n    return ids, ids.float(), np.arange(6)\n"
        "def ragged():\n    return {'ids': ids, 'mask': torch.ones(5, 4), 'labels': np.arange(6)}\n"
    )
    rec = load_data(f"{src}:records")
    assert list(rec.x) == ["input_ids", "attention_mask"] and rec.y.tolist() == [0, 1, 0, 1, 0, 1]
    reg = load_data(f"{src}:dict_and_targets")
    assert list(reg.x) == ["ids"] and reg.y.dtype == torch.float32 and reg.y.shape == (6,)
    pos = load_data(f"{src}:tuple_and_targets")
    assert isinstance(pos.x, tuple) and len(pos.x) == 2 and pos.x[1].dtype == torch.float32
    tri = load_data(f"{src}:triple")
    assert isinstance(tri.x, tuple) and torch.equal(tri.x[0], torch.arange(24).reshape(6, 4))
    assert tri.y.tolist() == list(range(6))
    with pytest.raises(DataLoadError, match="different numbers of samples"):
        load_data(f"{src}:ragged")


def test_datasets_of_dicts_and_tuples(tmp_path):
    src = tmp_path / "ds.py"
    src.write_text(
        "import numpy as np, torch\n"
        "class Dicts(torch.utils.data.Dataset):\n"
        "    def __len__(self): return 5\n"
        "    def __getitem__(self, i):\n"
        "        return {'input_ids': [i, i + 1, i + 2], 'attention_mask': np.ones(3), 'labels': i % 3}\n"
        "class Triples(torch.utils.data.Dataset):\n"
        "    def __len__(self): return 4\n"
        "    def __getitem__(self, i): return torch.full((2,), float(i)), torch.tensor([i, i]), float(i) / 2\n"
        "class Nested(torch.utils.data.Dataset):\n"
        "    def __len__(self): return 3\n"
        "    def __getitem__(self, i): return {'a': torch.full((2,), float(i))}, i\n"
        "class Ragged(torch.utils.data.Dataset):\n"
        "    def __len__(self): return 3\n"
        "    def __getitem__(self, i): return {'ids': list(range(i + 1)), 'labels': 0}\n"
        "class Bare(torch.utils.data.Dataset):\n"
        "    def __len__(self): return 3\n"
        "    def __getitem__(self, i): return torch.zeros(2)\n"
        "class Broken(torch.utils.data.Dataset):\n"
        "    def __len__(self): return 3\n"
        "    def __getitem__(self, i):\n"
        "        if i == 2: raise KeyError('lost')\n"
        "        return torch.zeros(2), 0\n"
        "dicts, triples, nested, ragged, bare, broken = Dicts, Triples, Nested, Ragged, Bare, Broken\n"
        "def empty(): return []\n"
    )
    d = load_data(f"{src}:dicts")
    assert list(d.x) == ["input_ids", "attention_mask"] and d.y.tolist() == [0, 1, 2, 0, 1]
    assert d.x["input_ids"].tolist()[4] == [4, 5, 6] and d.x["attention_mask"].dtype == torch.float32
    t = load_data(f"{src}:triples")
    assert isinstance(t.x, tuple) and t.x[0].shape == (4, 2) and t.x[1].dtype == torch.int64
    assert t.y.dtype == torch.float32 and t.y.tolist() == [0.0, 0.5, 1.0, 1.5]  # regression targets
    n = load_data(f"{src}:nested")
    assert list(n.x) == ["a"] and n.x["a"].shape == (3, 2) and n.y.tolist() == [0, 1, 2]
    with pytest.raises(DataLoadError, match=r"Cannot stack the items' \['ids'\].*item 0 has shape \(1,\), "
                                            r"item 1 has \(2,\).*pad"):
        load_data(f"{src}:ragged")
    with pytest.raises(DataLoadError, match="items of the dataset returned by .* are Tensors"):
        load_data(f"{src}:bare")
    with pytest.raises(DataLoadError, match="Cannot read item 2 .*KeyError"):
        load_data(f"{src}:broken")
    with pytest.raises(DataLoadError, match="is empty"):
        load_data(f"{src}:empty")


def test_batch_adapter_from_a_file(tmp_path):
    np.savez(tmp_path / "tok.npz", **_token_records(n=9))
    src = tmp_path / "adapt.py"
    src.write_text(
        "import torch\n"
        "seen = []\n"
        "def shift(batch):\n"
        "    seen.append(batch)\n"
        "    assert isinstance(batch['input_ids'], torch.Tensor)\n"
        "    return {'ids': batch['input_ids'], 'mask': batch['attention_mask']}, batch['labels'][:, :2]\n"
        "def tuple_in(batch):\n"
        "    x, y = batch\n"
        "    return (x, x * 2), y.float()\n"
        "def boom(batch):\n    raise ValueError('bad batch')\n"
        "def single(batch):\n    return batch['input_ids']\n"
        "def triple(batch):\n    return 1, 2, 3\n"
        "not_a_function = 3\n"
    )
    spec = f"npz:{tmp_path / 'tok.npz'}"
    data = load_data(spec, batch=f"{src}:shift")
    assert list(data.x) == ["ids", "mask"] and data.y.shape == (9, 2) and data.y.dtype == torch.int64
    assert data.description == f"{spec} --batch {src}:shift"
    sub = load_data(spec, samples=4, batch=f"{src}:shift")
    assert "--batch" in sub.description and "4 of 9 samples" in sub.description
    assert torch.equal(sub.y[:, 0], sub.x["ids"][:, 1])
    # (x, y) sources are handed over as a pair
    pair = load_data("digits:test", batch=f"{src}:tuple_in")
    assert isinstance(pair.x, tuple) and torch.equal(pair.x[1], 2 * pair.x[0]) and pair.y.dtype == torch.float32
    with pytest.raises(DataLoadError, match=f"Batch adapter {src}:boom failed.*ValueError: bad batch"):
        load_data(spec, batch=f"{src}:boom")
    with pytest.raises(DataLoadError, match=f"Batch adapter {src}:single returned Tensor.*pair"):
        load_data(spec, batch=f"{src}:single")
    with pytest.raises(DataLoadError, match="returned a tuple of 3"):
        load_data(spec, batch=f"{src}:triple")
    with pytest.raises(DataLoadError, match="not a function"):
        load_data(spec, batch=f"{src}:not_a_function")
    with pytest.raises(DataLoadError, match="no attribute 'nope'"):
        load_data(spec, batch=f"{src}:nope")
    with pytest.raises(DataLoadError, match="Cannot import module"):
        load_data(spec, batch="no_such_module_xyz:fn")


def test_batch_adapter_callable_sees_strings_and_the_whole_set():
    calls = []

    class Texts(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"text": "ab" * (i + 1), "label": i % 2}

    def tokenize(batch):
        calls.append(batch)
        ids = torch.tensor([[len(s), 0] for s in batch["text"]])
        return {"input_ids": ids}, batch["label"]

    data = _load_with_object(Texts(), tokenize, samples=3)
    assert len(calls) == 1 and calls[0]["text"] == ["ab", "abab", "ababab", "abababab"]
    assert data.x["input_ids"][:, 0].tolist() in ([2, 4, 6], [2, 4, 8], [2, 6, 8], [4, 6, 8])
    assert "--batch tests.test_data:" in data.description and ".tokenize (3 of 4 samples" in data.description


def _load_with_object(obj, adapter, samples=None):
    """load_data on a module:function that returns ``obj``."""
    import sys
    import types

    module = types.ModuleType("lossgrid_test_objects")
    module.make = lambda: obj
    sys.modules[module.__name__] = module
    try:
        return load_data("lossgrid_test_objects:make", samples=samples, batch=adapter)
    finally:
        del sys.modules[module.__name__]


# --- CIFAR-100 --------------------------------------------------------------------------------------

def _write_cifar100(path, n, seed):
    rng = np.random.RandomState(seed)
    batch = {b"data": rng.randint(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * n,
             b"fine_labels": list(rng.randint(0, 100, n)), b"coarse_labels": list(rng.randint(0, 20, n))}
    with open(path, "wb") as f:
        pickle.dump(batch, f)
    return batch


def _torchvision_normalize(images, mean, std):
    """ToTensor (uint8 -> float32 / 255) then Normalize, in float32, as torchvision computes them."""
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return torch.stack([torch.from_numpy(img).to(torch.float32).div(255).sub(m).div(s) for img in images])


def test_cifar100_python_version(tmp_path):
    train = _write_cifar100(tmp_path / "train", 7, 1)
    test = _write_cifar100(tmp_path / "test", 3, 2)
    data = load_data(f"cifar100:{tmp_path}")
    images = train[b"data"].reshape(-1, 3, 32, 32)
    assert data.x.shape == (7, 3, 32, 32) and data.x.dtype == torch.float32
    assert torch.equal(data.x, _torchvision_normalize(images, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)))
    assert data.y.tolist() == list(train[b"fine_labels"])
    coarse = load_data(f"cifar100:{tmp_path}:test:label=coarse")
    assert coarse.y.tolist() == list(test[b"coarse_labels"]) and len(coarse) == 3
    assert load_data(f"cifar100:{tmp_path}:label=fine:test").y.tolist() == list(test[b"fine_labels"])
    ref = load_data(f"cifar100:{tmp_path}:norm=reference").x
    assert torch.equal(ref, _torchvision_normalize(images, [v / 255 for v in (125.3, 123.0, 113.9)],
                                                   [v / 255 for v in (63.0, 62.1, 66.7)]))
    assert torch.equal(load_data(f"cifar100:{tmp_path}:norm=none").x, torch.from_numpy(images).float() / 255)
    explicit = load_data(f"cifar100:{tmp_path}:norm=0.5071,0.4865,0.4409/0.2673,0.2564,0.2762").x
    assert torch.equal(explicit, data.x)
    for bad, match in (("label=medium", "Unknown CIFAR-100 option"), ("norm=imagenet", "normalization")):
        with pytest.raises(DataLoadError, match=match):
            load_data(f"cifar100:{tmp_path}:{bad}")
    with pytest.raises(DataLoadError, match="Cannot read CIFAR-100 directory"):
        load_data(f"cifar100:{tmp_path / 'nope'}")


def test_cifar100_rejects_bad_batches(tmp_path):
    batch = _write_cifar100(tmp_path / "train", 4, 1)
    batch[b"coarse_labels"] = [0, 1, 2, 20]
    with open(tmp_path / "train", "wb") as f:
        pickle.dump(batch, f)
    assert len(load_data(f"cifar100:{tmp_path}")) == 4  # fine labels are fine
    with pytest.raises(DataLoadError, match=r"Cannot read CIFAR-100 batch .*b'coarse_labels' holds values from 0 "
                                            r"to 20, expected 0\.\.19.*cifar-100-python"):
        load_data(f"cifar100:{tmp_path}:label=coarse")
    del batch[b"fine_labels"]
    with open(tmp_path / "train", "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(DataLoadError, match="b'fine_labels' entries"):
        load_data(f"cifar100:{tmp_path}")
    with pytest.raises(DataLoadError, match="Cannot read CIFAR-100 batch"):
        load_data(f"cifar100:{tmp_path}:test")  # no test file


# --- image folders ----------------------------------------------------------------------------------

def _write_png(path, pixels):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _image_folder(root, size=(4, 6)):
    """cat (label 0) and dog (label 1) with 2 and 3 RGB images; extras that are not samples."""
    rng = np.random.RandomState(0)
    pix = {}
    for cls, names in (("dog", ["t.png", "a.PNG", "sub/c.png"]), ("cat", ["z.png", "y.bmp"])):
        for name in names:
            arr = rng.randint(0, 256, (*size, 3), dtype=np.uint8)
            _write_png(root / cls / name, arr) if not name.endswith(".bmp") else _write_bmp(root / cls / name, arr)
            pix[f"{cls}/{name}"] = arr
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".hidden.png").write_bytes(b"junk")  # hidden: skipped
    (root / ".cache").mkdir()  # hidden: not a class
    return pix


def _write_bmp(path, pixels):
    from PIL import Image

    Image.fromarray(pixels).save(path, format="BMP")


def test_imagefolder_labels_order_and_values(tmp_path):
    pix = _image_folder(tmp_path)
    data = load_data(f"imagefolder:{tmp_path}")
    order = ["cat/y.bmp", "cat/z.png", "dog/a.PNG", "dog/t.png", "dog/sub/c.png"]  # torchvision's order
    assert data.y.tolist() == [0, 0, 1, 1, 1] and data.x.shape == (5, 3, 4, 6) and data.x.dtype == torch.float32
    chw = np.stack([pix[k].transpose(2, 0, 1) for k in order])
    assert torch.equal(data.x, torch.from_numpy(chw).float() / 255)  # norm=none: only / 255
    net = load_data(f"imagefolder:{tmp_path}:norm=imagenet").x
    assert torch.equal(net, _torchvision_normalize(chw, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    ref = load_data(f"imagefolder:{tmp_path}:norm=reference").x
    assert torch.equal(ref, _torchvision_normalize(chw, CIFAR_MEAN, CIFAR_STD))
    sub = load_data(f"imagefolder:{tmp_path}", samples=2, sample_seed=1)
    assert len(sub) == 2 and "2 of 5 samples" in sub.description


def test_imagefolder_resize_gray_and_mixed_sizes(tmp_path):
    from PIL import Image

    pix = _image_folder(tmp_path)
    _write_png(tmp_path / "cat" / "big.png", np.full((9, 5, 3), 200, dtype=np.uint8))
    with pytest.raises(DataLoadError, match=r"Image .*y\.bmp is 4x6 \(HxW\) but .*big\.png is 9x5.*size="):
        load_data(f"imagefolder:{tmp_path}")
    data = load_data(f"imagefolder:{tmp_path}:size=3x8")
    assert data.x.shape == (6, 3, 3, 8) and data.y.tolist() == [0, 0, 0, 1, 1, 1]
    want = np.asarray(Image.fromarray(pix["dog/a.PNG"]).resize((8, 3), Image.Resampling.BILINEAR))
    assert torch.equal(data.x[3], torch.from_numpy(want.transpose(2, 0, 1).copy()).float() / 255)
    assert load_data(f"imagefolder:{tmp_path}:size=5").x.shape == (6, 3, 5, 5)
    gray = load_data(f"imagefolder:{tmp_path}:size=4x6:gray:norm=0.5/0.25")
    assert gray.x.shape == (6, 1, 4, 6)
    lum = np.asarray(Image.fromarray(pix["dog/t.png"]).convert("L"))
    want_gray = (torch.from_numpy(lum.copy()).float() / 255 - torch.tensor(0.5)) / torch.tensor(0.25)
    assert torch.equal(gray.x[4, 0], want_gray)
    for bad, match in (("size=0", "image size"), ("size=axb", "image size"), ("gray:norm=imagenet", "with :gray"),
                       ("gray:norm=0.5,0.5,0.5/1,1,1", "one mean"), ("norm=dataset", "normalization"),
                       ("color", "Unknown imagefolder option")):
        with pytest.raises(DataLoadError, match=match):
            load_data(f"imagefolder:{tmp_path}:{bad}")


def test_imagefolder_errors(tmp_path):
    _image_folder(tmp_path / "ok")
    (tmp_path / "ok" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataLoadError, match=r"Cannot read image .*broken\.jpg"):
        load_data(f"imagefolder:{tmp_path / 'ok'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataLoadError, match="has no classes.*no subdirectories"):
        load_data(f"imagefolder:{tmp_path / 'empty'}")
    _write_png(tmp_path / "flat" / "a.png", np.zeros((2, 2, 3), dtype=np.uint8))
    with pytest.raises(DataLoadError, match="has no classes.*1 images but no subdirectories"):
        load_data(f"imagefolder:{tmp_path / 'flat'}")
    _write_png(tmp_path / "oneempty" / "a" / "x.png", np.zeros((2, 2, 3), dtype=np.uint8))
    (tmp_path / "oneempty" / "b").mkdir()
    with pytest.raises(DataLoadError, match="Class 'b' .* holds no images"):
        load_data(f"imagefolder:{tmp_path / 'oneempty'}")
    with pytest.raises(DataLoadError, match="does not exist"):
        load_data(f"imagefolder:{tmp_path / 'missing'}")


def test_imagefolder_without_pillow(tmp_path, monkeypatch):
    import sys

    from lossgrid.errors import MissingBackendError

    _write_png(tmp_path / "a" / "x.png", np.zeros((2, 2, 3), dtype=np.uint8))
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(MissingBackendError, match="Pillow.*pip install pillow"):
        load_data(f"imagefolder:{tmp_path}")


def test_lists_are_one_array_of_samples_not_positional_inputs(tmp_path):
    (tmp_path / "lists.py").write_text(
        "import numpy as np\n"
        "def nested():\n"
        "    g = np.random.default_rng(0)\n"
        "    return g.random((30, 64)).tolist(), [int(v) for v in g.integers(0, 3, 30)]\n"
        "def arrays():\n"
        "    g = np.random.default_rng(0)\n"
        "    return [g.random(64) for _ in range(30)], g.integers(0, 3, 30)\n")
    for name in ("nested", "arrays"):
        data = load_data(f"{tmp_path / 'lists.py'}:{name}")
        assert isinstance(data.x, torch.Tensor) and tuple(data.x.shape) == (30, 64)
        assert data.x.dtype == torch.float32 and len(data) == 30
