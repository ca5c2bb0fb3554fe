"""Data loaders against hostile inputs: special files, decompression bombs, unreadable folders,
absurd sizes and damaged files all end in a DataLoadError that names the culprit -- never a
hang, a raw exception or an exhausted memory.

Loads that could block on a FIFO run in a thread joined with a timeout, so that a regression
fails the test instead of hanging the suite.
"""

import logging
import os
import pickle
import socket
import struct
import threading
import warnings
import zipfile
import zlib

import numpy as np
import pytest

from lossgrid.data import load_data
from lossgrid.errors import DataLoadError

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="os.mkfifo is POSIX only")


def _within(fn, fifos=(), timeout=20.0):
    """``fn()``'s value (or its exception, raised here); fails the test if it blocks ``timeout``
    seconds, after opening ``fifos`` for writing so that a reader stuck on one is let go."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # handed to the test's thread
            out["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the reader sees end of file
            except OSError:
                pass
        thread.join(5)
        pytest.fail(f"the load blocked for {timeout} s on a special file")
    if "error" in out:
        raise out["error"]
    return out["value"]


def _png(path, pixels=None, size=None):
    """A PNG of ``pixels`` (uint8 RGB), or a black 1-bit PNG of ``size`` = (width, height) written
    row by row: a decompression bomb of a few hundred kB for 20000 x 20000."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if pixels is not None:
        from PIL import Image

        Image.fromarray(pixels).save(path)
        return path
    width, height = size
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(1)
    body = b"".join(z.compress(row * 1024) for _ in range(height // 1024)) + z.compress(row * (height % 1024))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit gray
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body + z.flush())
                     + chunk(b"IEND", b""))
    return path


def _rgb(value=0, shape=(4, 5)):
    return np.full((*shape, 3), value, dtype=np.uint8)


def _cifar_batch(path, labels, data=None):
    data = np.zeros((len(labels), 3072), np.uint8) if data is None else data
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump({b"data": data, b"labels": labels}, fh, protocol=2)


# --- special files: FIFOs, sockets, devices are never opened -------------------------------------

@needs_fifo
def test_imagefolder_skips_fifos_sockets_and_devices_with_a_warning(tmp_path, monkeypatch, caplog):
    cat = tmp_path / "cat"
    _png(cat / "a.png", _rgb(10))
    _png(tmp_path / "dog" / "b.png", _rgb(20))
    os.mkfifo(cat / "pipe.png")
    os.symlink(cat / "pipe.png", cat / "link_to_pipe.jpg")
    fifos = [cat / "pipe.png"]
    monkeypatch.chdir(cat)  # a socket path must be short: bind it relative to its folder
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("sock.png")
        if os.path.exists("/dev/null"):
            os.symlink("/dev/null", cat / "null.png")
        with caplog.at_level(logging.WARNING, logger="lossgrid._images"):
            data = _within(lambda: load_data(f"imagefolder:{tmp_path}"), fifos)
    assert data.y.tolist() == [0, 1] and data.x.shape == (2, 3, 4, 5)
    skipped = "\n".join(caplog.messages)
    for name, kind in (("pipe.png", "FIFO (named pipe)"), ("link_to_pipe.jpg", "FIFO (named pipe)"),
                       ("sock.png", "socket")):
        assert f"{name}: it is a {kind}, not a regular file" in skipped
    if os.path.exists("/dev/null"):
        assert "null.png: it is a character device" in skipped


@needs_fifo
def test_a_class_of_only_fifos_and_a_fifo_read_directly_are_refused_naming_the_file(tmp_path):
    from lossgrid._images import read_image

    _png(tmp_path / "cat" / "a.png", _rgb())
    (tmp_path / "dog").mkdir()
    os.mkfifo(tmp_path / "dog" / "b.png")
    os.mkfifo(tmp_path / "dog" / "c.png")
    fifos = [tmp_path / "dog" / "b.png", tmp_path / "dog" / "c.png"]
    with pytest.raises(DataLoadError, match=r"Class 'dog' .* holds no image files.*b\.png: it is a FIFO "
                                            r"\(named pipe\), not a regular file \(and 1 more\)"):
        _within(lambda: load_data(f"imagefolder:{tmp_path}"), fifos)
    with pytest.raises(DataLoadError, match=r"Cannot read image .*c\.png.*FIFO"):
        _within(lambda: read_image(str(fifos[1]), False, None), fifos)


@needs_fifo
def test_cifar_batches_and_npz_files_that_are_fifos_are_refused(tmp_path):
    os.mkfifo(tmp_path / "test_batch")
    os.mkfifo(tmp_path / "train")
    os.mkfifo(tmp_path / "data.npz")
    os.symlink(tmp_path / "data.npz", tmp_path / "link.npz")
    fifos = [tmp_path / n for n in ("test_batch", "train", "data.npz")]
    for spec, match in ((f"cifar10:{tmp_path}:test", r"CIFAR-10 batch .*test_batch.*FIFO"),
                        (f"cifar100:{tmp_path}", r"CIFAR-100 batch .*train.*FIFO"),
                        (f"npz:{tmp_path / 'data.npz'}", r"data file .*data\.npz.*FIFO"),
                        (f"npz:{tmp_path / 'link.npz'}", r"data file .*link\.npz.*FIFO")):
        with pytest.raises(DataLoadError, match=match):
            _within(lambda spec=spec: load_data(spec), fifos)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_devices_are_refused_as_data_files():
    for spec in ("npz:/dev/zero", "npz:/dev/null"):
        with pytest.raises(DataLoadError, match="character device, not a regular file"):
            _within(lambda spec=spec: load_data(spec))


# --- decompression bombs and absurd image sizes --------------------------------------------------

@pytest.mark.parametrize("side, pixels", [(20000, "400,000,000"),  # Pillow itself refuses it
                                          (10000, "100,000,000"),  # Pillow only warns
                                          (8200, "67,240,000")])  # Pillow says nothing
def test_image_bombs_are_refused_before_decoding(tmp_path, monkeypatch, side, pixels):
    from PIL import ImageFile

    bomb = _png(tmp_path / "cat" / "bomb.png", size=(side, side))
    assert bomb.stat().st_size < 300_000
    _png(tmp_path / "dog" / "ok.png", _rgb())
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or pytest.fail("decoded"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not reach the user
        with pytest.raises(DataLoadError, match=rf"Image .*bomb\.png is too large to read.*it has {pixels} pixels; "
                                                r"at most 67,108,864"):
            load_data(f"imagefolder:{tmp_path}")
    assert not decoded


def test_image_size_option_is_bounded():
    with pytest.raises(DataLoadError, match=r"Image size '100000x100000' is too large.*10,000,000,000 pixels"):
        load_data("imagefolder:anywhere:size=100000x100000")


def test_only_the_formats_of_the_extensions_are_decoded(tmp_path, monkeypatch):
    """An EPS file named .png is not handed to Pillow's EPS reader (which runs Ghostscript)."""
    from PIL import EpsImagePlugin

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: pytest.fail("Ghostscript was run"))
    _png(tmp_path / "dog" / "ok.png", _rgb())
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "eps.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
                                               b"%%EndComments\nshowpage\n")
    with pytest.raises(DataLoadError, match=r"Cannot read image .*eps\.png.*cannot identify image file") as e:
        load_data(f"imagefolder:{tmp_path}")
    assert "Ghostscript" not in str(e.value)


def test_empty_and_truncated_images_are_refused_naming_the_file(tmp_path):
    good = _png(tmp_path / "cat" / "a.png", np.arange(60, dtype=np.uint8).reshape(4, 5, 3)).read_bytes()
    for name, content in (("empty.png", b""), ("cut.png", good[: len(good) - 30]), ("head.png", good[:8])):
        (tmp_path / "dog").mkdir(exist_ok=True)
        (tmp_path / "dog" / name).write_bytes(content)
        with pytest.raises(DataLoadError, match=rf"Cannot read image .*{name}"):
            load_data(f"imagefolder:{tmp_path}")
        (tmp_path / "dog" / name).unlink()

def test_image_folder_larger_than_memory_is_refused_after_its_first_image(tmp_path, monkeypatch):
    import lossgrid._images as images

    for i in range(3):
        _png(tmp_path / "cat" / f"{i}.png", _rgb(i, (20, 30)))
    reads = []
    real_read = images.read_image
    monkeypatch.setattr(images, "read_image", lambda *a: reads.append(a) or real_read(*a))
    monkeypatch.setattr("lossgrid._memory.available_memory", lambda: 10_000)
    with pytest.raises(DataLoadError, match=r"Cannot load 3 images of 3x20x30 .* needs 32,400 bytes of memory "
                                            r"and 10,000 are available.*size="):
        load_data(f"imagefolder:{tmp_path}")
    assert len(reads) == 1


# --- unreadable folders --------------------------------------------------------------------------

@pytest.mark.parametrize("locked", ["", "cat", "cat/deep"])
def test_unreadable_image_folders_are_named(tmp_path, monkeypatch, locked):
    """Tests run as root, where chmod blocks nothing: listing the folder raises as it would."""
    _png(tmp_path / "cat" / "a.png", _rgb())
    _png(tmp_path / "cat" / "deep" / "b.png", _rgb())
    _png(tmp_path / "dog" / "c.png", _rgb())
    target = os.path.join(tmp_path, locked) if locked else str(tmp_path)
    real_scandir = os.scandir

    def scandir(path="."):
        if os.path.normpath(os.fspath(path)) == os.path.normpath(target):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataLoadError, match=rf"Cannot list image folder '{target}/?'.*Permission denied.*readable"):
        load_data(f"imagefolder:{tmp_path}")


# --- CIFAR batches -------------------------------------------------------------------------------

@pytest.mark.parametrize("labels, why", [
    ([0, 2 ** 70], "values from 0 to 1180591620717411303424, expected 0..9"),  # beyond int64
    (np.array([0, 2 ** 63 + 5], dtype=np.uint64), "values from 0 to 9223372036854775813"),  # would wrap negative
    ([-1, 3], "values from -1 to 3"),
    ([0, 10], "values from 0 to 10"),
    ([0.5, 1.7], "is not a list of integers"),  # was truncated to 0, 1
    (np.array([0.0, 1.0]), "is float64 of shape"),
    (["1", "0"], "is not a list of integers"),
    ([0, 1, 2], "holds 3 labels for 2 images"),
])
def test_cifar_labels_that_are_not_class_indices_are_refused(tmp_path, labels, why):
    _cifar_batch(tmp_path / "test_batch", labels, np.zeros((2, 3072), np.uint8))
    with pytest.raises(DataLoadError, match=rf"Cannot read CIFAR-10 batch .*test_batch. Why: b'labels' .*{why}"):
        load_data(f"cifar10:{tmp_path}:test")


class _Declared:
    """Pickles as ``numpy.ndarray(shape, dtype, bytes(1), 0, strides 0)``: an array of zeros of
    any size that takes a few bytes in the file and one byte in memory, until it is copied."""

    def __init__(self, shape, dtype):
        self.args = (shape, dtype, bytes(np.dtype(dtype).itemsize), 0, (0,) * len(shape))

    def __reduce__(self):
        return np.ndarray, self.args


def test_cifar_batch_declaring_more_images_than_memory_holds_is_refused(tmp_path, monkeypatch):
    n = 100_000  # about 300 MB in 200 bytes; normalized, 1.2 GB
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": _Declared((n, 3072), "u1"), b"labels": _Declared((n,), "i8")}, fh, protocol=2)
    assert (tmp_path / "test_batch").stat().st_size < 300
    monkeypatch.setattr("lossgrid._memory.available_memory", lambda: 100_000_000)
    with pytest.raises(DataLoadError, match=r"Cannot load 100,000 CIFAR-10 images .* needs 1,536,000,000 bytes of "
                                            r"memory and 100,000,000 are available"):
        load_data(f"cifar10:{tmp_path}:test")


def test_damaged_cifar_pickles_are_refused_whatever_they_raise(tmp_path):
    good = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, protocol=2)
    assert b"latin1" in good  # protocol 2 writes bytes as _codecs.encode(text, 'latin1')
    for damaged, why in ((good.replace(b"latin1", b"nosuch", 1), "LookupError: unknown encoding"),
                         (b"\x80\x04\x8e" + (2 ** 62).to_bytes(8, "little"), "MemoryError|truncated"),
                         (good[: len(good) // 2], "truncated|EOFError"),
                         (b"", "empty")):
        (tmp_path / "test_batch").write_bytes(damaged)
        with pytest.raises(DataLoadError, match=rf"Cannot read CIFAR-10 batch .*test_batch. Why: .*({why})"):
            load_data(f"cifar10:{tmp_path}:test")


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("which, flags, why", [
    (0, b"\x01", r"b'data' has a tampered dtype \(uint8 with flags 1, numpy's has 0\)"),
    (1, b"\x01", r"b'labels' has a tampered dtype \(int64 with flags 1"),
    (0, b"\xff", r"SystemError"),  # numpy fails while unpickling and frees the half-built array
])
def test_cifar_arrays_with_tampered_dtype_flags_are_refused(tmp_path, which, flags, why):
    """A pickled dtype carries numpy's flags: uint8 flagged as holding objects equals np.uint8
    but raises a RuntimeError from every copy (normalization included), and again, on stderr,
    when it is freed."""
    batch = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": np.array([0, 1])}, protocol=2)
    state_end = b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"  # ... alignment, flags) of each dtype's state
    at = [i for i in range(len(batch)) if batch.startswith(state_end, i)][which] + len(state_end) - 2
    (tmp_path / "test_batch").write_bytes(batch[:at] + flags + batch[at + 1:])
    with pytest.raises(DataLoadError, match=rf"Cannot read CIFAR-10 batch .*test_batch. Why: {why}"):
        load_data(f"cifar10:{tmp_path}:test")


# --- npz archives --------------------------------------------------------------------------------

def _npz_bytes(compressed=False, **arrays):
    import io

    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def _damaged_npz_files(tmp_path):
    good = _npz_bytes(x=np.arange(12.0).reshape(4, 3), y=np.arange(4))
    compressed = _npz_bytes(True, x=np.arange(120.0).reshape(40, 3), y=np.arange(40))
    np.save(tmp_path / "lone.npy", np.zeros((4, 3)))
    offset = compressed.index(b"x.npy") + 40  # inside x's deflated data
    value = good.index(b"\x93NUMPY") + 128 + 8  # the second float of x, stored
    method = good.index(b"PK\x01\x02") + 10  # the compression method in the first central directory entry
    return {"lone.npy": ((tmp_path / "lone.npy").read_bytes(), "is a single .npy array, not an .npz archive"),
            "truncated.npz": (good[: len(good) // 2], "is incomplete.*truncated at"),
            "crc.npz": (good[:value] + b"\x01" + good[value + 1:], "BadZipFile: Bad CRC-32"),
            "inflate.npz": (compressed[:offset] + b"\xff\xff" + compressed[offset + 2:], "zlib.error: Error -3"),
            "method.npz": (good[:method] + b"\x63\x00" + good[method + 2:], "NotImplementedError: That compression"),
            "text.npz": (b"just some text", "it is not an .npz archive"),
            "zip-of-text.npz": (_zip_of_text(), "its member 'x' is not a .npy array")}


def _zip_of_text():
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("x.npy", "not an array")
        zf.writestr("y.npy", "nor this")
    return buf.getvalue()


def test_damaged_npz_files_are_refused_naming_the_file(tmp_path):
    for name, (content, why) in _damaged_npz_files(tmp_path).items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataLoadError, match=rf"{name}.*({why})"):
            load_data(f"npz:{tmp_path / name}")


def test_npz_declaring_more_than_memory_holds_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, x=np.zeros((1000, 1000), np.float32), y=np.zeros(1000, np.int64))
    assert path.stat().st_size < 100_000  # 4 MB of zeros compress to a few kB
    monkeypatch.setattr("lossgrid._memory.available_memory", lambda: 1_000_000)
    with pytest.raises(DataLoadError, match=r"Cannot load data file .*zeros\.npz.*needs 4,008,\d+ bytes of memory "
                                            r"and 1,000,000 are available"):
        load_data(f"npz:{path}")


def test_uint64_targets_beyond_int64_are_refused_not_wrapped(tmp_path):
    np.savez(tmp_path / "ok.npz", x=np.zeros((3, 2)), y=np.array([0, 1, 2], np.uint64))
    assert load_data(f"npz:{tmp_path / 'ok.npz'}").y.tolist() == [0, 1, 2]
    np.savez(tmp_path / "big.npz", x=np.zeros((3, 2)), y=np.array([0, 1, 2 ** 64 - 1], np.uint64))
    with pytest.raises(DataLoadError, match=r"targets of npz:.*big\.npz do not fit int64.*18,446,744,073,709,551,615"):
        load_data(f"npz:{tmp_path / 'big.npz'}")  # was -1


# --- synthetic sets ------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["synthetic:3:4:99999999999999999999999", "synthetic:3:4:9223372036854775808",
                                  "synthetic:3:4:0", "synthetic:3:4:-2"])
def test_synthetic_classes_must_fit_int64(spec):
    with pytest.raises(DataLoadError, match=r"out of range.*CLASSES from 1 to 9,223,372,036,854,775,807"):
        load_data(spec)


def test_synthetic_classes_at_the_int64_limit_work():
    assert load_data("synthetic:3:4:9223372036854775807").y.shape == (4,)


def test_synthetic_sets_larger_than_the_available_memory_are_refused_before_allocating(monkeypatch):
    from lossgrid._memory import available_memory

    if available_memory() is not None:  # the machine's own figure
        with pytest.raises(DataLoadError, match=r"too large.*needs 73,786,976,294,838,206,472 bytes of memory and "
                                                r"[\d,]+ are available.*lower N"):
            load_data("synthetic:4294967296x4294967296:1")  # the product overflows int64
    monkeypatch.setattr("lossgrid._memory.available_memory", lambda: 1000)
    with pytest.raises(DataLoadError, match=r"needs 1,120 bytes of memory and 1,000 are available"):
        load_data("synthetic:3x2x2:20")
    assert len(load_data("synthetic:3x2x2:10")) == 10  # 560 bytes
    monkeypatch.setattr("lossgrid._memory.available_memory", lambda: None)  # unknown: the fixed cap
    with pytest.raises(DataLoadError, match=r"more than the 17,179,869,184 allowed where the available memory "
                                            r"is unknown"):
        load_data("synthetic:99999x99999:9")


def test_available_memory_is_read_from_meminfo():
    from lossgrid._memory import available_memory

    if not os.path.exists("/proc/meminfo"):
        pytest.skip("no /proc/meminfo")
    assert available_memory() > 0


def test_npz_that_is_no_archive_or_a_truncated_one_says_so(tmp_path):
    """Not a zip: no word of pickles or allow_pickle; a zip cut short: incomplete, with the size."""
    from lossgrid.data import load_data
    from lossgrid.errors import DataLoadError

    text = tmp_path / "text.npz"
    text.write_bytes(b"x,y\n1,2\n" * 50)
    a_pickle = tmp_path / "p.npz"
    a_pickle.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)
    for path in (text, a_pickle):
        with pytest.raises(DataLoadError, match="not an .npz archive") as e:
            load_data(f"npz:{path}")
        assert "pickle" not in str(e.value).lower()
    whole = tmp_path / "whole.npz"
    np.savez(whole, x=np.zeros((40, 3), np.float32), y=np.zeros(40, np.int64))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(whole.read_bytes()[:300])
    with pytest.raises(DataLoadError, match="is incomplete") as e:
        load_data(f"npz:{cut}")
    assert "truncated at 300 bytes" in str(e.value) and "BadZipFile" not in str(e.value)

