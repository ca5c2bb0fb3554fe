"""VTK output for ParaView, written by our own small writer (numpy only: no VTK library).

Formats, chosen by the extension of ``out``:

* ``.vts``: XML StructuredGrid; ``.vtp``: XML PolyData (one quad per grid cell).
  Arrays are inline ``DataArray`` elements, ``format="binary"`` by default: the
  raw little-endian bytes of the array, preceded by a UInt64 byte count
  (``header_type="UInt64"``), base64-encoded together (VTK's own uncompressed
  inline layout); ``encoding="ascii"`` writes the numbers as text instead.
* ``.vtk``: legacy format, ASCII (``# vtk DataFile Version 3.0``, a
  ``STRUCTURED_GRID``; the metric as ``SCALARS``, the accuracy in a ``FIELD``),
  numbers written with 17 significant digits.

The surface is a height field: points ``(x, y, value)`` (points not computed
get height 0; VTK points must be finite) with point arrays of the metric and of
the accuracy (NaN where not computed). Points run x fastest, as VTK requires.
Options as in the reference implementation's ``h52vtp``: log scale, clipping
above ``zmax``, upsampling by interpolation to ``upsample`` points per axis
(cubic with scipy installed, bilinear with numpy alone).

The VTK library itself is needed only to read files back (:func:`read_vtk`,
used by the tests to prove the files valid).
"""

from __future__ import annotations

import base64
import os
from typing import Any

import numpy as np

from .._optional import require
from ..errors import ConfigError
from ..surface.file import Surface
from .common import metric_values

VTK_EXTENSIONS = (".vts", ".vtp", ".vtk")
ENCODINGS = ("binary", "ascii")
_VTK_TYPES = {"float64": "Float64", "int64": "Int64"}


# -- the height field ----------------------------------------------------------------------
def _bilinear(xs: np.ndarray, ys: np.ndarray, z: np.ndarray, nx: np.ndarray, ny: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of ``z[ix, iy]`` onto the grid ``nx x ny`` (numpy only).

    Separable: along x for every column, then along y for every new row; a NaN
    spreads to the cells around it, as with scipy's linear interpolation.
    """
    def along(coords: np.ndarray, values: np.ndarray, new: np.ndarray) -> np.ndarray:
        # index of the cell each new coordinate falls into, and the weight of its right end
        i = np.clip(np.searchsorted(coords, new, side="right") - 1, 0, max(len(coords) - 2, 0))
        if len(coords) == 1:
            return np.repeat(values[:1], len(new), axis=0)
        t = ((new - coords[i]) / (coords[i + 1] - coords[i]))[:, None]
        left, right = values[i], values[i + 1]
        # exact at the nodes, even next to a NaN neighbour (where a weight of 0 meets NaN)
        return np.where(t == 0, left, np.where(t == 1, right, left * (1 - t) + right * t))

    rows = along(xs, z, nx)                # (len(nx), len(ys))
    return along(ys, rows.T, ny).T         # (len(nx), len(ny))


def _upsample(xs: np.ndarray, ys: np.ndarray, z: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nx, ny = np.linspace(xs[0], xs[-1], n), np.linspace(ys[0], ys[-1], n)
    try:
        from scipy.interpolate import RegularGridInterpolator
    except ImportError:  # scipy is optional: bilinear with numpy
        return nx, ny, _bilinear(xs, ys, z, nx, ny)
    method = "cubic" if (np.isfinite(z).all() and min(len(xs), len(ys)) >= 4) else "linear"
    interp = RegularGridInterpolator((xs, ys), z, method=method)
    X, Y = np.meshgrid(nx, ny, indexing="ij")
    return nx, ny, interp(np.stack([X.ravel(), Y.ravel()], axis=1)).reshape(n, n)


def height_field(surface: Surface, metric: str = "loss", log: bool = False, zmax: float | None = None,
                 upsample: int | None = None) -> dict[str, np.ndarray]:
    """The arrays written to VTK: ``x``, ``y`` coordinates and ``z``, ``acc`` as ``[ix, iy]``."""
    if surface.ndim != 2:
        raise ConfigError("VTK output needs a 2D surface", hint="compute it with --y, or plot 1D as a curve")
    z, _ = metric_values(surface, metric, log=log, vmax=zmax)
    acc = np.where(surface.done, surface.acc, np.nan)
    xs, ys = surface.xcoordinates, surface.ycoordinates
    assert ys is not None
    if upsample:
        if upsample < 2:
            raise ConfigError(f"Cannot upsample to {upsample} points", hint="pass --upsample 2 or more")
        _, _, acc = _upsample(xs, ys, acc, upsample)
        xs, ys, z = _upsample(xs, ys, z, upsample)
    return {"x": xs, "y": ys, "z": z, "acc": acc}


# -- writing -----------------------------------------------------------------------------------
def write_vtk(surface: Surface, out: str, metric: str = "loss", log: bool = False, zmax: float | None = None,
              upsample: int | None = None, encoding: str = "binary") -> None:
    """Write ``out`` (.vts, .vtp or .vtk by extension); ``encoding`` of the XML arrays:
    ``binary`` (base64) or ``ascii``. Legacy ``.vtk`` files are always ASCII."""
    ext = os.path.splitext(out)[1].lower()
    if ext not in VTK_EXTENSIONS:
        raise ConfigError(f"Unknown VTK file type {ext or '(none)'}", hint="end --out in .vts, .vtp or .vtk")
    if encoding not in ENCODINGS:
        raise ConfigError(f"Unknown VTK encoding {encoding!r}", hint=f"use one of {', '.join(ENCODINGS)}")
    field = height_field(surface, metric, log, zmax, upsample)
    xs, ys, z = field["x"], field["y"], field["z"]
    nx, ny = len(xs), len(ys)
    # VTK structured points run x fastest: order [iy, ix]
    X, Y = np.meshgrid(xs, ys, indexing="xy")
    points = np.stack([X.ravel(), Y.ravel(), np.nan_to_num(z.T.ravel(), nan=0.0, posinf=0.0, neginf=0.0)], axis=1)
    arrays = {metric if not log else f"log10_{metric}": z.T.ravel(), "acc": field["acc"].T.ravel()}
    if ext == ".vtk":
        text = _legacy(points, arrays, nx, ny, f"lossgrid {metric} surface")
    elif ext == ".vts":
        text = _xml_structured(points, arrays, nx, ny, encoding)
    else:
        text = _xml_polydata(points, arrays, nx, ny, encoding)
    with open(out, "w", encoding="ascii", newline="\n") as fh:
        fh.write(text)


def _numbers(a: np.ndarray) -> str:
    """Numbers as text: 17 significant digits (float64 round-trips), ``nan``/``inf`` as VTK reads them."""
    if a.dtype.kind == "i":
        return " ".join(str(int(v)) for v in a.ravel())
    return " ".join(format(float(v), ".17g") for v in a.ravel())


def _data_array(a: np.ndarray, encoding: str, name: str | None = None, components: int = 1) -> str:
    """One inline XML ``DataArray`` element."""
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    head = f'<DataArray type="{_VTK_TYPES[a.dtype.name]}"'
    head += f' Name="{name}"' if name else ""
    head += f' NumberOfComponents="{components}"' if components > 1 else ""
    if encoding == "ascii":
        return f'{head} format="ascii">{_numbers(a)}</DataArray>'
    raw = a.tobytes()
    payload = base64.b64encode(np.uint64(len(raw)).astype("<u8").tobytes() + raw).decode("ascii")
    return f'{head} format="binary">{payload}</DataArray>'


def _point_data(arrays: dict[str, np.ndarray], encoding: str) -> str:
    first = next(iter(arrays))
    body = "\n".join(_data_array(np.asarray(v, dtype=np.float64), encoding, name) for name, v in arrays.items())
    return f'<PointData Scalars="{first}">\n{body}\n</PointData>'


def _xml(kind: str, body: str, extent: str | None = None) -> str:
    whole = f' WholeExtent="{extent}"' if extent else ""
    return ('<?xml version="1.0"?>\n'
            f'<VTKFile type="{kind}" version="1.0" byte_order="LittleEndian" header_type="UInt64">\n'
            f"<{kind}{whole}>\n{body}\n</{kind}>\n</VTKFile>\n")


def _xml_structured(points: np.ndarray, arrays: dict[str, np.ndarray], nx: int, ny: int, encoding: str) -> str:
    extent = f"0 {nx - 1} 0 {ny - 1} 0 0"
    body = (f'<Piece Extent="{extent}">\n{_point_data(arrays, encoding)}\n'
            f"<Points>\n{_data_array(points, encoding, components=3)}\n</Points>\n</Piece>")
    return _xml("StructuredGrid", body, extent)


def _xml_polydata(points: np.ndarray, arrays: dict[str, np.ndarray], nx: int, ny: int, encoding: str) -> str:
    # one quad per cell, corners counter-clockwise: (i, j), (i+1, j), (i+1, j+1), (i, j+1)
    ii, jj = np.meshgrid(np.arange(nx - 1), np.arange(ny - 1), indexing="xy")
    first = (jj * nx + ii).ravel()
    connectivity = np.stack([first, first + 1, first + 1 + nx, first + nx], axis=1).ravel().astype(np.int64)
    offsets = np.arange(4, connectivity.size + 1, 4, dtype=np.int64)  # the end of each cell
    body = (f'<Piece NumberOfPoints="{nx * ny}" NumberOfPolys="{len(first)}">\n{_point_data(arrays, encoding)}\n'
            f"<Points>\n{_data_array(points, encoding, components=3)}\n</Points>\n"
            f"<Polys>\n{_data_array(connectivity, encoding, 'connectivity')}\n"
            f"{_data_array(offsets, encoding, 'offsets')}\n</Polys>\n</Piece>")
    return _xml("PolyData", body)


def _legacy(points: np.ndarray, arrays: dict[str, np.ndarray], nx: int, ny: int, title: str) -> str:
    lines = ["# vtk DataFile Version 3.0", title, "ASCII", "DATASET STRUCTURED_GRID", f"DIMENSIONS {nx} {ny} 1",
             f"POINTS {nx * ny} double"]
    lines += [_numbers(p) for p in points]
    (first, values), *others = arrays.items()
    # the metric as the active SCALARS; the other arrays as a FIELD, which every reader loads
    # (a second SCALARS section is skipped by readers without ReadAllScalars)
    lines += [f"POINT_DATA {nx * ny}", f"SCALARS {first} double 1", "LOOKUP_TABLE default",
              _numbers(np.asarray(values, np.float64))]
    if others:
        lines.append(f"FIELD FieldData {len(others)}")
        for name, values in others:
            lines += [f"{name} 1 {nx * ny} double", _numbers(np.asarray(values, np.float64))]
    return "\n".join(lines) + "\n"


# -- reading back (tests; needs the VTK library) -------------------------------------------
def read_vtk(path: str) -> dict[str, Any]:
    """Read back a file written by :func:`write_vtk` with the VTK library:
    ``points`` ``[N, 3]``, the point arrays and, for ``.vtp``, ``cells``."""
    require("vtkmodules", "dev", "Reading VTK files back")
    from vtkmodules.util.numpy_support import vtk_to_numpy

    ext = os.path.splitext(path)[1].lower()
    if ext == ".vts":
        from vtkmodules.vtkIOXML import vtkXMLStructuredGridReader as Reader
    elif ext == ".vtp":
        from vtkmodules.vtkIOXML import vtkXMLPolyDataReader as Reader
    else:
        from vtkmodules.vtkIOLegacy import vtkStructuredGridReader as Reader
    reader = Reader()
    reader.SetFileName(path)
    reader.Update()
    data = reader.GetOutput()
    if data is None or data.GetPoints() is None:
        raise ValueError(f"VTK could not read {path}")
    out: dict[str, Any] = {"points": vtk_to_numpy(data.GetPoints().GetData())}
    pd = data.GetPointData()
    for i in range(pd.GetNumberOfArrays()):
        out[pd.GetArrayName(i)] = vtk_to_numpy(pd.GetArray(i))
    if ext == ".vtp":
        out["cells"] = np.array(data.GetNumberOfCells())
        polys = data.GetPolys()
        out["connectivity"] = vtk_to_numpy(polys.GetConnectivityArray())
    else:
        dims = [0, 0, 0]
        data.GetDimensions(dims)
        out["dimensions"] = np.array(dims)
    return out
