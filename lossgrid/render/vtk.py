"""VTK output for ParaView, written with the VTK library itself.

``.vts`` (XML structured grid), ``.vtp`` (XML poly data, quads) or ``.vtk``
(legacy structured grid). The surface is a height field: points
``(x, y, value)`` with point arrays of the metric and the accuracy. Options as
in the reference implementation's ``h52vtp``: log scale, clipping above
``zmax``, and upsampling by (cubic) interpolation to ``upsample`` points per axis.
"""

from __future__ import annotations

import os

import numpy as np

from .._optional import require
from ..engine.surface_file import Surface
from ..errors import ConfigError
from ._common import metric_values

VTK_EXTENSIONS = (".vts", ".vtp", ".vtk")


def _upsample(xs: np.ndarray, ys: np.ndarray, z: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from scipy.interpolate import RegularGridInterpolator

    method = "cubic" if (np.isfinite(z).all() and min(len(xs), len(ys)) >= 4) else "linear"
    interp = RegularGridInterpolator((xs, ys), z, method=method)
    nx, ny = np.linspace(xs[0], xs[-1], n), np.linspace(ys[0], ys[-1], n)
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


def write_vtk(surface: Surface, out: str, metric: str = "loss", log: bool = False, zmax: float | None = None,
              upsample: int | None = None) -> None:
    """Write ``out`` (.vts, .vtp or .vtk by extension)."""
    ext = os.path.splitext(out)[1].lower()
    if ext not in VTK_EXTENSIONS:
        raise ConfigError(f"Unknown VTK file type {ext or '(none)'}", hint="end --out in .vts, .vtp or .vtk")
    require("vtkmodules", "vtk", "VTK output")
    from vtkmodules.util.numpy_support import numpy_to_vtk
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData, vtkStructuredGrid

    field = height_field(surface, metric, log, zmax, upsample)
    xs, ys, z = field["x"], field["y"], field["z"]
    nx, ny = len(xs), len(ys)
    # VTK structured points run x fastest: order [iy, ix]
    X, Y = np.meshgrid(xs, ys, indexing="xy")
    coords = np.stack([X.ravel(), Y.ravel(), np.nan_to_num(z.T.ravel(), nan=0.0)], axis=1)
    points = vtkPoints()
    points.SetData(numpy_to_vtk(np.ascontiguousarray(coords), deep=True))
    if ext == ".vtp":
        from vtkmodules.util.numpy_support import numpy_to_vtkIdTypeArray

        data = vtkPolyData()
        ii, jj = np.meshgrid(np.arange(nx - 1), np.arange(ny - 1), indexing="xy")
        first = (jj * nx + ii).ravel()
        connectivity = np.stack([first, first + 1, first + 1 + nx, first + nx], axis=1).ravel().astype(np.int64)
        offsets = np.arange(0, connectivity.size + 1, 4, dtype=np.int64)
        quads = vtkCellArray()
        quads.SetData(numpy_to_vtkIdTypeArray(offsets, deep=True), numpy_to_vtkIdTypeArray(connectivity, deep=True))
        data.SetPolys(quads)
    else:
        data = vtkStructuredGrid()
        data.SetDimensions(nx, ny, 1)
    data.SetPoints(points)
    for name, arr in ((metric if not log else f"log10_{metric}", z), ("acc", field["acc"])):
        va = numpy_to_vtk(np.ascontiguousarray(arr.T.ravel()), deep=True)
        va.SetName(name)
        data.GetPointData().AddArray(va)
    writer = _writer(ext)
    writer.SetFileName(out)
    writer.SetInputData(data)
    if not writer.Write():
        raise OSError("the VTK writer failed")


def _writer(ext: str):  # type: ignore[no-untyped-def]
    if ext == ".vts":
        from vtkmodules.vtkIOXML import vtkXMLStructuredGridWriter

        return vtkXMLStructuredGridWriter()
    if ext == ".vtp":
        from vtkmodules.vtkIOXML import vtkXMLPolyDataWriter

        return vtkXMLPolyDataWriter()
    from vtkmodules.vtkIOLegacy import vtkStructuredGridWriter

    w = vtkStructuredGridWriter()
    w.SetFileTypeToBinary()
    return w


def read_vtk(path: str) -> dict[str, np.ndarray]:
    """Read back a file written by :func:`write_vtk`: ``points`` ``[N, 3]`` and point arrays."""
    require("vtkmodules", "vtk", "VTK input")
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
    out = {"points": vtk_to_numpy(data.GetPoints().GetData())}
    pd = data.GetPointData()
    for i in range(pd.GetNumberOfArrays()):
        out[pd.GetArrayName(i)] = vtk_to_numpy(pd.GetArray(i))
    if ext == ".vtp":
        out["cells"] = np.array(data.GetNumberOfCells())
    return out
