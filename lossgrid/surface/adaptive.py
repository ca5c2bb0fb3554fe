"""Adaptive grids (``--adaptive``): evaluate a coarse grid, refine only where the
interpolation is measured to be off by more than a tolerance, fill the rest.

A pure policy: NumPy only, no model, no files. The surface loop asks it which
points to evaluate next (:meth:`AdaptiveGrid.next_points`), evaluates them, and
asks again until the answer is empty; :meth:`AdaptiveGrid.fill` then gives the
whole surface and the mask of interpolated points.

**Lattices.** Each axis has nested lattices: level 0 is every ``coarse``-th index
plus the last one; level ``l + 1`` adds the midpoint ``a + (b - a) // 2`` of every
level-``l`` interval ``[a, b]`` with ``b - a >= 2``; at the last level every index
is on the lattice. A level-``l`` *cell* is a product of level-``l`` intervals (an
axis with one point has the interval ``[0, 0]``); its *check points* are the
level-``l + 1`` lattice points in the closed cell (edge midpoints and centre).

**Interpolant** ``I_l`` (prediction from level ``l``; the same for the surplus
and for :meth:`fill`): a tensor product of one-dimensional Lagrange stencils.
On level 0 a cubic through the two level-0 points on each side (quadratic or
linear at the ends of short axes); on level ``l >= 1`` the quadratic through the
three level-``l`` points of the parent interval. Both use only points the policy
has always evaluated when it needs them, so every decision is a fixed function of
the loss values and not of the order of evaluation.

**Rules** (the evaluated set is their least fixed point):

* level 0 is evaluated and every level-0 cell is checked (its check points are
  evaluated: that is the whole level-1 lattice);
* the *surplus* of a level-``l + 1`` point is ``f - I_l``: the measured error of
  the coarser interpolant there. The point is *bad* if ``|surplus| > tol * range``,
  or if it or a value of its stencil is not finite (a diverged point: a wall that
  is never interpolated across). ``range`` is max - min of the finite losses of
  levels 0 and 1 (always evaluated first, so the threshold never depends on the
  order of later evaluations; the final range can only be larger, which makes
  the test stricter, not looser);
* a level-``l`` cell is *bad* if its closure holds a bad level-``l + 1`` point, a
  non-finite corner, or, when checked, a point off the level-``l + 1`` lattice where
  ``I_{l+1}`` (what :meth:`fill` would use) and ``I_l`` differ by more than
  ``tol * range`` (a second estimate that costs no evaluation: at least one of them
  is off by half that there). A bad cell, and each
  cell sharing a face with it, is checked and so are its children (the
  level-``l + 1`` cells inside it): refinement goes one level down where the error
  is large and next to it (see below why next to it);
* a checked cell's parent is checked (its stencil points must exist).

**Estimates** (points evaluated on a subset, ``--samples``/``--target-se``, with or
without anchors): their values carry noise of a known standard error ``se``. A
surplus is then bad only if it exceeds ``max(tau, Z * se_s)`` with ``Z = 1.96``:
beyond the tolerance *and* beyond what the noise explains, where ``se_s`` bounds
the surplus's standard error by ``se`` of the point plus ``sum |w_q| se_q`` over its
stencil (the standard deviation of a weighted sum is at most the weighted sum of
theirs). The disagreement test uses the same bound. Without it, noise larger than
``tau`` marks every check bad and refines the whole grid, which only replaces
interpolation error by noise of the same size. Checks accepted only because of
their noise are counted in :meth:`report` (``checks_within_noise``). Exact values
(``se`` 0 or not given) follow the rules above unchanged.

**Intervals** (:meth:`fill_se`): an interpolated point gets the standard error
``sum |w_q| se_q + |I_m - I_{m-1}| / Z``: the noise its stencil carries in, plus the
change from the next coarser interpolant as its interpolation error, so that
``+- Z se`` is a conservative 95% interval (measured in the tests: 97-100% coverage).

:meth:`next_points` returns the points these rules require that are not done
(level 0 first, then level 1, then refinement rounds); empty means finished. It
reconstructs everything from ``(loss, done)`` on every call, so a resumed run needs
no saved state, and since every rule only adds points, any order or batching of
the evaluations (a run killed mid-chunk) ends at the same evaluated set.

**The bound, why, and where it may fail.** An unevaluated point is filled with
``I_m`` of the finest level ``m`` whose stencil is evaluated. It lies in a
level-``m - 1`` cell that was checked and not bad: ``I_{m-1}`` was measured at the
cell's edge midpoints and centre (where a tensor interpolant's error peaks for a
smooth function) and agreed with ``I_m`` elsewhere, both within ``tol * range``.
The fill uses the lattice twice as fine, whose error for a function smooth at the
cell's scale is several times smaller (quadratic: error ~ h^3). Next to a bad cell
(a wall, a kink) that argument is weak: the checks' stencils reach into the wall,
a wall's foot can bend inside the cell between checks, and a check can be small by
cancellation (a 1D cell has a single check). Without the face-neighbour rule such
cells gave errors up to 2 * tol; with it the fill stays within ``tol * range`` on
every test surface (0.23% at most for ``tol = 0.01``). The stated bound is
``|fill - f| <= 2 * tol * range`` at every point: on 2,400 random landscape-like
surfaces (1D and 2D, 21 to 101 points, coarse 2 to 16, tol 0.002 to 0.05) the
error exceeded ``tol`` in 0.2% of the cases (at most 1.7 tol) and ``2 * tol`` once,
on a 21-point line with ``coarse = 16`` (three level-0 points). What no check can
see is a feature narrower than the check spacing that falls between check points
(a spike or a hole missed on every lattice): with ``coarse = 4`` the first checks
are 2 points apart, with 16 they are 8 apart. :meth:`report` gives the largest
measured surplus of the accepted checks.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np

from ..config import AdaptiveSpec
from ..errors import ConfigError
from .anchors import lagrange_weights
from .file import INTERPOLATED, SE, Surface, SurfaceWriter

log = logging.getLogger(__name__)

#: the normal quantile of 95% intervals: a surplus within Z standard errors may be noise
Z = 1.96
#: rounding allowance of a surplus, in units of the largest |loss| (sums of four weighted values)
_ROUNDING = 64 * np.finfo(np.float64).eps


class _Axis:
    """The nested lattices of one axis, padded to ``depth`` levels."""

    def __init__(self, n: int, coarse: int) -> None:
        self.n = n
        marks = sorted(set(range(0, n, coarse)) | {n - 1})
        ivs = [(0, 0)] if n == 1 else list(zip(marks[:-1], marks[1:]))
        self.intervals = [np.array(ivs, dtype=np.int64).reshape(-1, 2)]
        self.parents: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
        while any(b - a >= 2 for a, b in ivs):
            nxt, par = [], []
            for k, (a, b) in enumerate(ivs):
                if b - a >= 2:
                    m = a + (b - a) // 2
                    nxt += [(a, m), (m, b)]
                    par += [k, k]
                else:
                    nxt.append((a, b))
                    par.append(k)
            ivs = nxt
            self.intervals.append(np.array(ivs, dtype=np.int64).reshape(-1, 2))
            self.parents.append(np.array(par, dtype=np.int64))

    @property
    def depth(self) -> int:
        return len(self.intervals) - 1

    def pad(self, depth: int) -> None:
        """Repeat the last level (no more splits) up to ``depth``."""
        while self.depth < depth:
            self.parents.append(np.arange(len(self.intervals[-1]), dtype=np.int64))
            self.intervals.append(self.intervals[-1])
        self._tables()

    def _tables(self) -> None:
        n = self.n
        self.on, self.lo, self.hi, self.sidx, self.sw = [], [], [], [], []
        self.level = np.full(n, -1, dtype=np.int64)
        for lvl, ivs in enumerate(self.intervals):
            on = np.zeros(n, dtype=bool)
            on[ivs.ravel()] = True
            self.level[on & (self.level < 0)] = lvl
            k_count = len(ivs)
            lo = np.full(n, k_count, dtype=np.int64)  # k_count: no such cell
            hi = np.full(n, k_count, dtype=np.int64)
            idx = np.zeros((n, 4), dtype=np.int64)
            w = np.zeros((n, 4))
            idx[:, 0] = np.arange(n)
            w[:, 0] = 1.0
            marks = np.unique(ivs.ravel())
            for k, (a, b) in enumerate(ivs):
                hi[a], lo[b] = k, k
                if b - a < 2:
                    continue
                lo[a + 1:b] = hi[a + 1:b] = k
                if lvl == 0:
                    nodes = marks[max(k - 1, 0):k + 3]
                else:
                    pa, pb = self.intervals[lvl - 1][self.parents[lvl][k]]
                    nodes = np.array([pa, pa + (pb - pa) // 2, pb])
                for i in range(a + 1, b):
                    idx[i, :len(nodes)] = nodes
                    w[i, :] = 0.0
                    w[i, :len(nodes)] = lagrange_weights(nodes.astype(float), float(i))
            self.on.append(on)
            self.lo.append(lo)
            self.hi.append(hi)
            self.sidx.append(idx)
            self.sw.append(w)
        self.used = [w != 0.0 for w in self.sw]


def _with_neighbours(cells: np.ndarray) -> np.ndarray:
    """``cells`` and the cells sharing a face with them (left, right, below, above)."""
    out = cells.copy()
    out[1:] |= cells[:-1]
    out[:-1] |= cells[1:]
    out[:, 1:] |= cells[:, :-1]
    out[:, :-1] |= cells[:, 1:]
    return out


def _fingerprint(loss: np.ndarray, done: np.ndarray, se: np.ndarray) -> bytes:
    """A digest of the done mask and the values and standard errors at the done points."""
    digest = hashlib.blake2b(np.ascontiguousarray(done).tobytes(), digest_size=16)
    digest.update(np.ascontiguousarray(np.where(done, loss, 0.0)).tobytes())
    digest.update(np.ascontiguousarray(se).tobytes())
    return digest.digest()


class AdaptiveGrid:
    """Which points of a 1D ``(nx,)`` or 2D ``(nx, ny)`` grid to evaluate, and the filled surface.

    Args:
        shape: the grid's shape.
        spec: tolerance and coarse stride.
        done: points already evaluated by an earlier run (resuming); only counted in
            :meth:`report`: every decision is rebuilt from ``(loss, done)`` on each call.

    Example:
        >>> import numpy as np
        >>> x = np.linspace(-1, 1, 21)
        >>> exact = np.log1p(4 * x[:, None] ** 2 + x[None, :] ** 2)
        >>> grid = AdaptiveGrid(exact.shape, AdaptiveSpec(tol=0.01, coarse=4))
        >>> loss, done = np.full(exact.shape, np.nan), np.zeros(exact.shape, bool)
        >>> while (idx := grid.next_points(loss, done)).size:
        ...     loss.flat[idx], done.flat[idx] = exact.flat[idx], True
        >>> surface, interpolated = grid.fill(loss, done)
        >>> bool(np.abs(surface - exact).max() <= 0.01 * np.ptp(exact)), bool(interpolated.any())
        (True, True)
    """

    def __init__(self, shape: tuple[int, ...], spec: AdaptiveSpec, done: np.ndarray | None = None) -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) not in (1, 2) or min(shape) < 1:
            raise ConfigError(f"An adaptive grid has shape {shape}", "adaptive grids are 1D or 2D, every axis "
                              "at least one point", "use --x (and --y) with at least one point each")
        self.shape, self.spec = shape, spec
        self._shape2 = shape if len(shape) == 2 else (shape[0], 1)
        self._x, self._y = _Axis(self._shape2[0], spec.coarse), _Axis(self._shape2[1], spec.coarse)
        self.depth = max(self._x.depth, self._y.depth)
        self._x.pad(self.depth)
        self._y.pad(self.depth)
        self._grids = [np.logical_and.outer(self._x.on[lvl], self._y.on[lvl]) for lvl in range(self.depth + 1)]
        self._plevel = np.maximum.outer(self._x.level, self._y.level)
        self._rounds = 0
        self._resumed = 0 if done is None else int(self._check(np.zeros(shape), done)[1].sum())
        self._last: tuple[np.ndarray, np.ndarray] | None = None
        self._noise = np.zeros(self._shape2)  # the standard errors last given to next_points
        self._memo: dict[str, tuple[bytes, Any]] = {}  # the last _derive and fill, by input fingerprint

    # -- public ---------------------------------------------------------------------
    def next_points(self, loss: np.ndarray, done: np.ndarray, se: np.ndarray | None = None) -> np.ndarray:
        """Flat C-order indices to evaluate next; empty when the surface is finished.

        ``loss`` holds the values of the points done (anything elsewhere); ``done``
        marks them; ``se`` their standard errors where they are estimates (points
        evaluated on a subset; ``None`` or non-finite: exact). The first call gives the
        coarse grid, the second the rest of level 1 (the first checks), then
        refinement rounds.
        """
        loss2, done2, self._noise = self._check(loss, done, se)
        self._last = (loss2, done2)
        todo = self._derive(loss2, done2, self._noise)["req"] & ~done2
        idx = np.flatnonzero(todo)
        if idx.size:
            self._rounds += 1
        return idx

    def first_levels_left(self, done: np.ndarray) -> int:
        """Points of levels 0 and 1 not yet done: what every run of this grid evaluates whatever the values."""
        first = self._grids[0] | self._grids[min(1, self.depth)]
        return int((first & ~np.asarray(done, bool).reshape(self._shape2)).sum())

    def fill(self, loss: np.ndarray, done: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The whole surface and the mask of interpolated points.

        Evaluated points keep their values (NaN/inf included). Every other point gets
        ``I_m`` of the finest level whose stencil is evaluated, NaN if that stencil
        holds a non-finite value (never interpolated across a diverged point) or if
        no stencil is evaluated yet (a run not finished).
        """
        out, pending, _ = self._filled(loss, done, None)
        self._last = self._check(loss, done)[:2]
        return out.copy(), pending.copy()

    def fill_se(self, loss: np.ndarray, done: np.ndarray, se: np.ndarray | None = None) -> np.ndarray:
        """Standard errors for the whole surface: the evaluated points' own (``se``; NaN
        without), and for every interpolated point an allowance such that ``fill +- Z se``
        is a conservative 95% interval (``Z`` = 1.96)::

            se_fill = sum_q |w_q| se_q  +  |I_m - I_{m-1}| / Z

        The first term bounds the noise the stencil's estimates carry into the fill (the
        standard deviation of a weighted sum is at most the weighted sum of theirs,
        whatever their correlation); the second is the interpolation error measured as
        the change from the next coarser interpolant, which for a surface smooth at the
        lattice's scale is several times the fill's own error. Points left NaN by
        :meth:`fill` get NaN.
        """
        return self._filled(loss, done, se)[2].copy()

    def report(self) -> dict[str, Any]:
        """JSON-able summary of the last state seen by :meth:`next_points` or :meth:`fill`:
        settings, ``rounds`` (non-empty :meth:`next_points` answers in this process),
        points evaluated / total / share / interpolated / left NaN, ``finished``, the
        loss range and the absolute ``threshold`` (``tol`` times the range of levels 0-1).

        ``max_check_error`` is the largest measured surplus of the accepted checks
        (points where ``I_{m-1}`` was measured and found within the threshold) as a
        share of the final loss range: an upper estimate of the error of the filled
        points, which use the lattice one level finer (see the module docstring).
        """
        loss, done = self._last if self._last is not None else self._check(
            np.full(self.shape, np.nan), np.zeros(self.shape, bool))[:2]
        se = self._noise
        st = self._derive(loss, done, se)
        finite = loss[done & np.isfinite(loss)]
        span = float(finite.max() - finite.min()) if finite.size else 0.0
        accepted = st["judged"] & ~st["bad"] & st["req"]
        errors = np.abs(st["surplus"][accepted])
        total = int(done.size)
        filled, interpolated, _ = self._filled(loss.reshape(self.shape), done.reshape(self.shape), None)
        return {
            "method": "adaptive", "tol": self.spec.tol, "coarse": self.spec.coarse, "levels": self.depth + 1,
            "rounds": self._rounds, "points_evaluated": int(done.sum()), "points_total": total,
            "share_evaluated": float(done.sum() / total), "points_resumed": self._resumed,
            "points_interpolated": int(interpolated.sum()),
            "points_unfilled": int((interpolated & ~np.isfinite(filled)).sum()),
            "nonfinite_points": int((done & ~np.isfinite(loss)).sum()),
            "finished": bool(st["tau"] is not None and not (st["req"] & ~done).any()),
            "loss_range": span, "threshold": st["tau"], "checks": int((st["judged"] & st["req"]).sum()),
            "checks_refined": int((st["bad"] & st["req"]).sum()),
            "max_check_error": float(errors.max() / span) if errors.size and span > 0 else None,
            "checks_within_noise": int((st["judged"] & st["req"] & st["noisy"]).sum()),
        }

    # -- the rules -------------------------------------------------------------------
    def _filled(self, loss: np.ndarray, done: np.ndarray, se: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`fill` and :meth:`fill_se`, computed once per input."""
        loss2, done2, se2 = self._check(loss, done, se)
        given = np.full(self._shape2, np.nan) if se is None else np.asarray(se, np.float64).reshape(self._shape2)
        key = _fingerprint(loss2, done2, given)
        if self._memo.get("fill", (None,))[0] != key:
            out = np.where(done2, loss2, np.nan)
            out_se = np.where(done2, given, np.nan)
            pending = ~done2
            previous = None
            for lvl in range(self.depth):  # coarse to fine: the finest available stencil wins
                est, have, ok = self._interp(lvl, loss2, done2)
                noise = self._interp(lvl, se2, done2, absolute=True)[0]
                sel = pending & have
                out[sel] = np.where(ok[sel], est[sel], np.nan)
                change = np.abs(est - previous) if previous is not None else np.zeros(self._shape2)
                out_se[sel] = np.where(ok[sel], noise[sel] + change[sel] / Z, np.nan)
                previous = np.where(have & ok, est, np.nan) if previous is None else np.where(
                    have & ok, est, previous)
            self._memo["fill"] = (key, (out.reshape(self.shape), pending.reshape(self.shape),
                                        out_se.reshape(self.shape)))
        return self._memo["fill"][1]

    def _derive(self, loss: np.ndarray, done: np.ndarray, se: np.ndarray) -> dict[str, Any]:
        """The required points as far as the known values decide them (the least set closed
        under the rules of the module docstring), with the surpluses behind them."""
        key = _fingerprint(loss, done, se)
        if self._memo.get("derive", (None,))[0] != key:
            self._memo["derive"] = (key, self._rules(loss, done, se))
        return self._memo["derive"][1]

    def _rules(self, loss: np.ndarray, done: np.ndarray, se: np.ndarray) -> dict[str, Any]:
        depth, grids, x, y = self.depth, self._grids, self._x, self._y
        base = grids[0] | grids[min(1, depth)]
        st: dict[str, Any] = {"req": grids[0].copy(), "tau": None, "surplus": np.full(self._shape2, np.nan),
                              "bad": np.zeros(self._shape2, bool), "judged": np.zeros(self._shape2, bool),
                              "noisy": np.zeros(self._shape2, bool)}
        if not done[grids[0]].all():
            return st
        st["req"] = base.copy()
        if not done[base].all():
            return st
        values = loss[base & np.isfinite(loss)]
        tau = self.spec.tol * float(values.max() - values.min()) if values.size else 0.0
        slack = _ROUNDING * float(np.abs(values).max()) if values.size else 0.0
        bad, judged, surplus, noisy = st["bad"], st["judged"], st["surplus"], st["noisy"]
        disagree = []  # per level l: unevaluated points where I_{l+1} and I_l differ by more than tau
        with np.errstate(invalid="ignore", over="ignore"):
            interps = [self._interp(lvl, loss, done) for lvl in range(depth)]
            noise = [self._interp(lvl, se, done, absolute=True)[0] for lvl in range(depth)]
            for lvl, (est, have, ok) in enumerate(interps):
                new = (self._plevel == lvl + 1) & done & have
                s = loss - est
                judged |= new
                surplus[new] = s[new]
                limit = np.maximum(tau, Z * (se + noise[lvl]))  # an estimate's surplus: beyond its noise too
                noisy |= new & (np.abs(s) > tau + slack) & (np.abs(s) <= limit + slack)
                bad |= new & (~ok | ~np.isfinite(loss) | (np.abs(s) > limit + slack))
                if lvl + 1 < depth:
                    fine, fine_have, fine_ok = interps[lvl + 1]
                    limit = np.maximum(tau, Z * (noise[lvl] + noise[lvl + 1]))
                    disagree.append((self._plevel > lvl + 1) & have & ok & fine_have & fine_ok
                                    & (np.abs(fine - est) > limit + slack))
                else:
                    disagree.append(np.zeros(self._shape2, bool))
        nonfinite = done & ~np.isfinite(loss)
        req = st["req"]
        checked = [np.zeros((len(x.intervals[lvl]), len(y.intervals[lvl])), bool) for lvl in range(depth)]
        if depth:
            checked[0][:] = True
        while True:
            before = sum(int(c.sum()) for c in checked)
            for lvl in range(depth - 1, 0, -1):  # a checked cell's parent is checked
                kx, ky = np.nonzero(checked[lvl])
                checked[lvl - 1][x.parents[lvl][kx], y.parents[lvl][ky]] = True
            for lvl in range(depth):
                req |= self._expand(lvl, checked[lvl]) & grids[lvl + 1]
            for lvl in range(depth):  # bad cells: checked, and their children too
                points = req & ((bad & (self._plevel == lvl + 1)) | (nonfinite & grids[lvl]))
                points |= disagree[lvl] & self._expand(lvl, checked[lvl])
                cells = _with_neighbours(self._touch(lvl, points))
                checked[lvl] |= cells
                if lvl + 1 < depth:
                    checked[lvl + 1] |= cells[np.ix_(x.parents[lvl + 1], y.parents[lvl + 1])]
            if sum(int(c.sum()) for c in checked) == before:
                break
        st["tau"] = tau
        return st

    def _expand(self, lvl: int, checked: np.ndarray) -> np.ndarray:
        """Points whose closed level-``lvl`` cells include a checked one."""
        x, y = self._x, self._y
        pad = np.zeros((checked.shape[0] + 1, checked.shape[1] + 1), bool)
        pad[:-1, :-1] = checked
        out = np.zeros(self._shape2, bool)
        for ix in (x.lo[lvl], x.hi[lvl]):
            for iy in (y.lo[lvl], y.hi[lvl]):
                out |= pad[np.ix_(ix, iy)]
        return out

    def _touch(self, lvl: int, points: np.ndarray) -> np.ndarray:
        """Level-``lvl`` cells whose closure holds one of ``points``."""
        x, y = self._x, self._y
        cells = np.zeros((len(x.intervals[lvl]) + 1, len(y.intervals[lvl]) + 1), bool)
        i, j = np.nonzero(points)
        for ix in (x.lo[lvl][i], x.hi[lvl][i]):
            for iy in (y.lo[lvl][j], y.hi[lvl][j]):
                cells[ix, iy] = True
        return cells[:-1, :-1]

    def _interp(self, lvl: int, loss: np.ndarray, done: np.ndarray, absolute: bool = False
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``I_lvl`` at every point, whether its stencil is evaluated, and whether it is also finite.
        ``absolute``: with the weights' absolute values (a bound on the noise of ``I_lvl`` from
        standard errors given as ``loss``)."""
        x, y = self._x, self._y
        fin = done & np.isfinite(loss)
        v = np.where(fin, loss, 0.0)
        xw, yw = (np.abs(x.sw[lvl]), np.abs(y.sw[lvl])) if absolute else (x.sw[lvl], y.sw[lvl])
        ty, hy, fy = np.zeros(self._shape2), np.ones(self._shape2, bool), np.ones(self._shape2, bool)
        for b in range(4):  # along y, then along x: the stencil is a tensor product
            cols, unused = y.sidx[lvl][:, b], ~y.used[lvl][None, :, b]
            ty += yw[None, :, b] * v[:, cols]
            hy &= done[:, cols] | unused
            fy &= fin[:, cols] | unused
        est, have, ok = np.zeros(self._shape2), np.ones(self._shape2, bool), np.ones(self._shape2, bool)
        for a in range(4):
            rows, unused = x.sidx[lvl][:, a], ~x.used[lvl][:, a, None]
            est += xw[:, a, None] * ty[rows, :]
            have &= hy[rows, :] | unused
            ok &= fy[rows, :] | unused
        return est, have, ok

    def _check(self, loss: np.ndarray, done: np.ndarray, se: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies (callers go on writing) in the 2D shape: the loss, the done mask, and the standard
        errors of the done points (0 where exact or not given)."""
        loss, done = np.array(loss, dtype=np.float64), np.asarray(done)
        se = np.zeros(self.shape) if se is None else np.asarray(se, dtype=np.float64)
        if loss.shape != self.shape or done.shape != self.shape or se.shape != self.shape:
            raise ConfigError(f"Loss {loss.shape}, done {done.shape} and standard errors {se.shape} do not fit the "
                              f"adaptive grid {self.shape}", "all are arrays of the grid's shape",
                              "pass the surface's loss, done and train_loss_se arrays")
        done = done.astype(bool)
        se = np.where(done & np.isfinite(se) & (se > 0), se, 0.0)
        return loss.reshape(self._shape2), done.reshape(self._shape2), se.reshape(self._shape2)


def fill_adaptive(policy: AdaptiveGrid, surface: Surface, writer: SurfaceWriter | None) -> None:
    """Fill the points an adaptive grid left unevaluated by its interpolation (values and the
    standard errors of :meth:`AdaptiveGrid.fill_se`) and mark them."""
    acc, _ = policy.fill(surface.acc, surface.done)
    se = surface.extra.get(SE)
    filled_se = policy.fill_se(surface.loss, surface.done, se)
    loss, interpolated = policy.fill(surface.loss, surface.done)  # last: the report describes the loss
    if writer is not None:
        writer.store_filled(loss, acc, interpolated, filled_se)
    else:
        surface.loss[interpolated], surface.acc[interpolated] = loss[interpolated], acc[interpolated]
        surface.extra[INTERPOLATED] = interpolated.astype(np.float64)
        if se is not None:
            se[interpolated] = filled_se[interpolated]
    log.info("adaptive grid: %d of %d points evaluated, %d interpolated", int(surface.done.sum()),
             surface.done.size, int(interpolated.sum()))
