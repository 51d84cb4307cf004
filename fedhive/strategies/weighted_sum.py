"""In-place weighted sums of models: the one aggregation kernel every strategy uses.

``out = Σ_k c_k · x_k`` over lists of tensors, written into preallocated arrays, with no temporary per client per
tensor. Flower's ``aggregate_arrayrecords`` allocates one (``value.numpy() * weight``) and streams every temporary
through memory.

numpy only, like every module of ``fedhive.strategies``:

- Tiny tensors (``<= SMALL`` elements: biases, norms) use numpy's own temporary, which costs fewer calls than a
  scratch block; per-call overhead is all there is at that size, and it is what the engine pays per event for the
  simulator's small models.
- Larger ones are cut in blocks of ``BLOCK`` elements (one block for tensors up to that size). Per block, each term
  is multiplied into a small scratch row (``np.multiply(x[blk], c, out=row)``) and the rows are added pairwise
  into ``out[blk]``: the block, its rows and the running sums stay in L2, so each client tensor is read from memory
  once and the extra in-cache pass is what numpy pays for having no fused multiply-add. Pairwise addition keeps the
  rounding error of K terms growing like ``log K`` rather than ``K``. float16 tensors are summed in float32 rows
  and rounded once at the end.
- numpy has no fused multiply-add: every term costs a multiply and an add, each rounded. On float32 tensors of 128 Ki
  elements or more, streamed from memory, that takes 1.2-1.5× the time of a fused ``out += c·x`` for 10 terms or
  for one accumulated term (FedAvg's), 1.0-1.2× for 2; and sums of up to ~10 terms have a slightly larger
  rounding error than fused ones (pairwise addition wins from ~30 terms). numpy's float16 arithmetic and casts are
  scalar (~2 ns an element): large float16 sums are an order of magnitude slower than torch's. A process that wants
  the fused speed installs a kernel from outside the strategies layer with :func:`set_kernel` (for instance torch's
  ``out.add_(x, alpha=c)``, ``benchmarks/aggregate.py``'s ``torch_kernel``); it then takes every tensor of at least
  ``FUSED_MIN`` elements.

``out`` may be one of the inputs (``weighted_sum([(1.0, w), (-0.5, d)], out=w)``, or ``out=d``): a term whose
tensor is the output array itself is read before anything is written to it. Other overlaps between ``out`` and the
inputs (views of the same memory) are not supported on tensors of up to ``SMALL`` elements; larger ones are copied
first.

``benchmarks/aggregate.py`` measures it against ``numpy.copyto`` of the same bytes and against Flower.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

# Block size, in elements (512 KiB of float32). Measured on the 2-core EPYC (1 MiB L2 per core), 2 and 10 terms,
# float32 and float64 tensors of 256 Ki to 1 M elements: 128 Ki was ahead of 32 Ki and 64 Ki (per-call overhead)
# in most interleaved runs and level with 256 Ki and 512 Ki, all within the noise of a shared machine.
BLOCK = 131072
# Tensors up to this many elements (16 KiB of float32) skip the scratch rows: numpy's own temporary is cheaper.
SMALL = 4096
# An installed kernel (set_kernel) takes tensors of at least this many elements (where torch's fused add took over
# before this module was numpy only).
FUSED_MIN = 65537

Term = tuple[float, Sequence[np.ndarray]]
# kernel(out, terms, accumulate): ``out (+)= Σ c·x`` for a 1-D C-contiguous ``out`` and 1-D inputs of its size
# (``c`` a Python float). Only the first input may share memory with ``out``, and then it is ``out``'s own elements.
Kernel = Callable[[np.ndarray, list[tuple[float, np.ndarray]], bool], None]

_kernel: Kernel | None = None


def set_kernel(kernel: Kernel | None) -> Kernel | None:
    """Install ``kernel`` for tensors of at least ``FUSED_MIN`` elements (``None``: numpy's blocks); returns the
    previous one. Process-wide: meant for the composition root (server start-up), not for strategies."""
    global _kernel
    previous, _kernel = _kernel, kernel
    return previous


def weighted_sum(
    terms: Sequence[Term],
    out: list[np.ndarray] | None = None,
    *,
    indices: Sequence[int] | None = None,
    accumulate: bool = False,
) -> list[np.ndarray]:
    """``out[t] (+)= Σ_k c_k · x_k[t]`` for every tensor ``t`` in ``indices``.

    Parameters
    ----------
    terms
        ``(coefficient, tensors)`` pairs; every ``tensors`` list has the same shapes and floating dtypes.
    out
        Arrays to write into (same shapes; C-contiguous is fastest). ``None`` allocates them like the first term's
        tensors. Tensors not in ``indices`` are left as they are (uninitialised when freshly allocated). May be one
        of the terms' tensors (see the module docstring).
    indices
        Which tensors to compute; all by default.
    accumulate
        Add to ``out`` instead of overwriting it.

    Returns
    -------
    list of numpy.ndarray
        ``out``.
    """
    if not terms:
        raise ValueError("weighted_sum needs at least one term")
    first = terms[0][1]
    given = out is not None
    if out is None:
        out = [np.empty(x.shape, x.dtype) for x in first]  # C order
    idx = range(len(first)) if indices is None else indices
    coefs = [float(c) for c, _ in terms]
    k = len(terms)
    # Tensors of out that a later term reads (out=d in weighted_sum([(1.0, w), (-0.5, d)], out=d)): that term is
    # read first, before anything overwrites it.
    later = terms[1:] if given else ()
    scratch: _Scratch | None = None
    for t in idx:
        o = out[t]
        n = o.size
        if n == 0:
            continue
        xs = None
        for _, x in later:
            if x[t] is o:
                xs, cs = _alias_first(o, [y[t] for _, y in terms], coefs)
                break
        if n <= SMALL:  # biases, norms, tiny models: a temporary this size costs less than setting up scratch
            if xs is None:  # the hot path of the engine's small models: as few Python operations as possible
                if accumulate:
                    for c, (_, x) in zip(coefs, terms):
                        o += x[t] * c
                else:
                    np.multiply(first[t], coefs[0], out=o)
                    for j in range(1, k):
                        o += terms[j][1][t] * coefs[j]
            else:
                if not accumulate:
                    np.multiply(xs[0], cs[0], out=o)
                for j in range(0 if accumulate else 1, len(xs)):
                    o += xs[j] * cs[j]
            continue
        if xs is None:
            xs = [x[t] for _, x in terms]
            cs = coefs
        if given:  # a view of out other than out itself would be read after being written: read a copy
            for j in range(1 if xs[0] is o else 0, len(xs)):
                if np.may_share_memory(xs[j], o):
                    xs[j] = xs[j].copy()
        if _kernel is not None and n >= FUSED_MIN:
            _flat(o, xs, lambda flat, xf: _kernel(flat, list(zip(cs, xf)), accumulate))
            continue
        if scratch is None or scratch.cs is not cs:
            scratch = _Scratch(cs, accumulate)
        if n <= BLOCK:  # one block: the arrays as they are (any strides), rows shaped like them
            cz, rows = scratch.get(o.dtype, n)
            _sum(o, xs, cz, accumulate, [r.reshape(o.shape) for r in rows] if o.ndim != 1 else rows)
        else:
            _flat(o, xs, lambda flat, xf: _blocked(flat, xf, accumulate, scratch))
    return out


def _alias_first(o: np.ndarray, xs: list[np.ndarray], cs: list[float]) -> tuple[list[np.ndarray], list[float]]:
    """The terms reordered so that the one(s) reading ``o`` come first, merged into one."""
    c_alias = sum(c for c, x in zip(cs, xs) if x is o)
    rest = [(c, x) for c, x in zip(cs, xs) if x is not o]
    return [o] + [x for _, x in rest], [c_alias] + [c for c, _ in rest]


class _Scratch:
    """Scratch rows and 0-d coefficients for the sums of one call, allocated once per call and dtype."""

    __slots__ = ("cs", "_coefs", "_buf", "_rows", "_depth")

    def __init__(self, cs: list[float], accumulate: bool) -> None:
        self.cs = cs
        self._coefs: dict[np.dtype, list[np.ndarray]] = {}
        self._buf: np.ndarray | None = None
        self._rows: list[np.ndarray] = []
        # Items added pairwise: the terms, plus what is in out when accumulating. A binary counter over them holds
        # at most bit_length(items) partial sums, one of which is out itself (or, for float16, row 0, and then the
        # other rows are one more); one more row takes the next product.
        self._depth = (len(cs) + accumulate).bit_length() + 1

    def get(self, dtype: np.dtype, m: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(coefficients, rows) for blocks of ``m`` elements of ``dtype``: 1-D rows of the working dtype."""
        work = _F32 if dtype.itemsize < 4 else dtype  # float16 sums in float32 rows
        cz = self._coefs.get(work)
        if cz is None:
            # 0-d arrays of the working dtype: the same rounding as a Python float (cast to that dtype), and a
            # third of the per-call cost of a Python scalar in a ufunc.
            cz = self._coefs[work] = [np.array(c, work) for c in self.cs]
        rows = self._rows
        if not rows or rows[0].dtype != work or rows[0].size != m:
            buf = self._buf
            if buf is None or buf.dtype != work or buf.shape[1] < m:
                buf = self._buf = np.empty((self._depth + 1, max(m, min(BLOCK, 2 * m))), work)
            rows = self._rows = [buf[i, :m] for i in range(buf.shape[0])]
        return cz, rows


_F32 = np.dtype(np.float32)


def _sum(ob: np.ndarray, xb: list[np.ndarray], cz: list[np.ndarray], accumulate: bool,
         rows: list[np.ndarray]) -> None:
    """``ob (+)= Σ cz[k]·xb[k]``, the products added pairwise; ``rows``: scratch shaped like ``ob``."""
    mul, add = np.multiply, np.add
    direct = ob.dtype == rows[0].dtype  # the sums build up in ob itself; otherwise (float16) in rows[0]
    if direct:
        base, free = ob, rows[:]
    else:
        base, free = rows[0], rows[1:]
    terms = zip(cz, xb)
    if accumulate:
        if not direct:
            np.copyto(base, ob)
    else:
        c0, x0 = next(terms)
        mul(x0, c0, base)
    # a binary counter: [level, array] partial sums; two of equal level are added, the lower array keeps the sum
    stack = [[0, base]]
    for c, x in terms:
        row = free.pop()
        mul(x, c, row)
        level = 0
        while stack[-1][0] == level:
            lower = stack.pop()[1]
            add(lower, row, lower)
            free.append(row)
            row = lower
            level += 1
            if not stack:
                break
        stack.append([level, row])
    while len(stack) > 1:
        upper = stack.pop()[1]
        lower = stack[-1][1]
        add(lower, upper, lower)
    if not direct:
        np.copyto(ob, base, casting="same_kind")


def _flat(o: np.ndarray, xs: list[np.ndarray], fn: Callable[[np.ndarray, list[np.ndarray]], None]) -> None:
    """``fn`` on 1-D views of ``o`` (C-contiguous: a copy written back if ``o`` is not) and of ``xs``."""
    dst = o if o.flags.c_contiguous else np.ascontiguousarray(o)
    if dst is not o and xs[0] is o:  # the aliased term reads the copy
        xs = [dst] + xs[1:]
    fn(dst.reshape(-1), [x.reshape(-1) for x in xs])  # views for contiguous tensors, copies for the others
    if dst is not o:
        np.copyto(o, dst)


def _blocked(o: np.ndarray, xs: list[np.ndarray], accumulate: bool, scratch: _Scratch) -> None:
    """``_sum`` on 1-D arrays of more than ``BLOCK`` elements, one block at a time."""
    n = o.size
    cz, rows = scratch.get(o.dtype, BLOCK)
    for s in range(0, n - BLOCK, BLOCK):
        e = s + BLOCK
        _sum(o[s:e], [x[s:e] for x in xs], cz, accumulate, rows)
    s = (n - 1) // BLOCK * BLOCK  # the last block, full or not
    _sum(o[s:], [x[s:] for x in xs], cz, accumulate, [r[: n - s] for r in rows])


def mean_of(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Plain mean of same-shaped arrays, in their dtype (integers are rounded): for non-trainable tensors."""
    first = arrays[0]
    if first.dtype.kind == "f":
        acc = weighted_sum([(1.0 / len(arrays), [a]) for a in arrays])[0]
        return acc
    total = np.zeros(first.shape, dtype=np.float64)
    for a in arrays:
        total += a
    return np.asarray(np.rint(total / len(arrays)), dtype=first.dtype)
