"""The fused kernel the strategies' weighted sum uses for large tensors, installed by the programs that run them.

``fedhive.strategies.weighted_sum`` is numpy only (strategies import nothing else). numpy has no fused
multiply-add, so a large float32 sum costs one extra pass and one extra rounding per term there: 1.2-1.5x the time of
torch's ``add_(x, alpha=c)`` for ten 1M-element updates, and a slightly larger error for sums of few terms
(``benchmarks/aggregate.py --kernel numpy|torch``). The server app and the simulator therefore install this torch
kernel at start (:func:`install`); without torch the numpy blocks stay in use.
"""

from __future__ import annotations

import warnings

import numpy as np

from fedhive.strategies import weighted_sum as ws


def torch_kernel() -> ws.Kernel:
    """A ``weighted_sum.Kernel`` on torch: ``out (+)= Σ c·x`` with the fused ``add_(x, alpha=c)`` on zero-copy views.

    One thread: the sum is memory-bound, and on a busy machine torch's intra-op threads wait for a core between
    every operation (measured on the 2-core EPYC: ~8 ms per add_ with the other core busy, against 0.25 ms).
    """
    import torch

    def kernel(out: np.ndarray, terms: list[tuple[float, np.ndarray]], accumulate: bool) -> None:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with warnings.catch_warnings():
                # Published models are read-only numpy arrays; torch warns that its view could write. We only read.
                warnings.simplefilter("ignore", UserWarning)
                ot = torch.from_numpy(out)
                ts = [(c, torch.from_numpy(x if x.strides[0] > 0 else np.ascontiguousarray(x))) for c, x in terms]
            # float16 is summed in float32 and rounded once, as the numpy path does (torch would round every term).
            acc = ot.float() if ot.dtype == torch.float16 else ot
            if not accumulate:
                c0, x0 = ts[0]
                torch.mul(x0.to(acc.dtype), c0, out=acc)
                ts = ts[1:]
            for c, x in ts:
                acc.add_(x.to(acc.dtype), alpha=c)
            if acc is not ot:
                ot.copy_(acc)
        finally:
            torch.set_num_threads(threads)

    return kernel


def install() -> bool:
    """Install :func:`torch_kernel` for the strategies' large-tensor sums; False (numpy kept) without torch."""
    try:
        kernel = torch_kernel()
    except ImportError:
        return False
    ws.set_kernel(kernel)
    return True
