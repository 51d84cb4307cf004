"""MNIST-1D (Greydanus, "Scaling down deep learning", 2020) with the paper's small 1-D CNN.

The data come from the ``mnist1d`` package's own generator (``make_dataset``), run offline; nothing is downloaded
and nothing is unpickled. Generating 10,000 samples takes a few seconds, so the arrays are kept in a process-wide
cache and, unless disabled, in a ``.npz`` file under ``$FEDHIVE_CACHE`` (default ``~/.cache/fedhive``; set it to
an empty string to turn the disk cache off). A cache file that cannot be read or does not fit (truncated, garbled,
another layout) is logged, deleted and regenerated, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedhive.tasks import partition as part
from fedhive.tasks.base import LearningTask
from fedhive.tasks.batched import _BatchedModel
from fedhive.strategies.params import integer, number
from fedhive.tasks.config import TrainJob

__all__ = ["MNIST1D", "ConvBase", "load_mnist1d", "cache_dir"]

log = logging.getLogger(__name__)

# Bump when the stored layout changes so old cache files are ignored rather than misread.
_CACHE_FORMAT = 1

_DATA: dict[str, dict[str, np.ndarray]] = {}
_DATA_LOCK = threading.Lock()


def cache_dir() -> Path | None:
    """Directory of fedhive's on-disk caches: ``$FEDHIVE_CACHE``, else ``~/.cache/fedhive``; None if disabled."""
    env = os.environ.get("FEDHIVE_CACHE")
    if env is None:
        return Path.home() / ".cache" / "fedhive"
    return Path(env).expanduser() if env.strip() else None


def _generator_args(num_samples: int, train_split: float, seed: int) -> dict:
    from mnist1d.data import get_dataset_args  # imported late: the package pulls in matplotlib

    args = get_dataset_args(as_dict=True)
    args.pop("url", None)  # only used by the package's downloader, which fedhive never calls
    args.update(num_samples=int(num_samples), train_split=float(train_split), seed=int(seed))
    return args


def _generate(args: dict) -> dict[str, np.ndarray]:
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    # make_dataset reseeds Python's and numpy's global generators; put them back so callers are unaffected.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        ds = make_dataset(ObjectView(dict(args)))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {
        "x": np.ascontiguousarray(ds["x"], dtype=np.float32),
        "y": np.ascontiguousarray(ds["y"], dtype=np.int64),
        "x_test": np.ascontiguousarray(ds["x_test"], dtype=np.float32),
        "y_test": np.ascontiguousarray(ds["y_test"], dtype=np.int64),
    }


def _read_npz(path: Path, args: dict) -> dict[str, np.ndarray] | None:
    """The cached arrays, or ``None`` when the file is unreadable or does not fit ``args``: then it is deleted
    (best effort) and the caller regenerates the data and writes a fresh cache."""
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in ("x", "y", "x_test", "y_test")}
        length = args["final_seq_length"]
        ok = (
            all(a.ndim == (2 if k.startswith("x") else 1) for k, a in data.items())
            and data["x"].shape[1] == length
            and data["x_test"].shape[1:] == (length,)
            and len(data["x"]) == len(data["y"])
            and len(data["x_test"]) == len(data["y_test"])
            and len(data["x"]) + len(data["x_test"]) == 10 * (args["num_samples"] // 10)
        )
        reason = None if ok else "shapes do not match the generator arguments"
    except Exception as exc:  # a truncated, garbled or foreign file: zipfile, zlib, numpy or EOF errors
        reason = f"unreadable ({type(exc).__name__}: {exc})"
    if reason is not None:
        log.warning("MNIST-1D cache %s is %s: deleting it and generating the data again", path,
                    reason if reason.startswith("unreadable") else f"wrong: {reason}")
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not delete the bad MNIST-1D cache %s: %s", path, exc)
        return None
    return {
        "x": data["x"].astype(np.float32, copy=False),
        "y": data["y"].astype(np.int64, copy=False),
        "x_test": data["x_test"].astype(np.float32, copy=False),
        "y_test": data["y_test"].astype(np.int64, copy=False),
    }


def _write_npz(path: Path, data: dict[str, np.ndarray]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **data)
            os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the whole new one
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        log.info("could not write MNIST-1D cache %s: %s", path, exc)


def load_mnist1d(num_samples: int = 10_000, train_split: float = 0.8, seed: int = 0) -> dict[str, np.ndarray]:
    """The MNIST-1D arrays for these generator settings, generated once per process (and cached on disk).

    Parameters
    ----------
    num_samples : int, optional
        Total number of samples (rounded down to a multiple of 10, one tenth per digit), default 10,000.
    train_split : float, optional
        Fraction that goes to the training set, default 0.8.
    seed : int, optional
        Generator seed, default 0.

    Returns
    -------
    dict
        ``x`` (float32, ``(n_train, 40)``), ``y`` (int64), ``x_test``, ``y_test``. Shared: do not modify.
    """
    args = _generator_args(num_samples, train_split, seed)
    key_src = json.dumps({"format": _CACHE_FORMAT, "args": args}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
    with _DATA_LOCK:
        data = _DATA.get(key)
        if data is not None:
            return data
        directory = cache_dir()
        path = directory / f"mnist1d-{key}.npz" if directory is not None else None
        if path is not None and path.exists():
            data = _read_npz(path, args)
        if data is None:
            data = _generate(args)
            if path is not None:
                _write_npz(path, data)
        for arr in data.values():
            arr.setflags(write=False)  # shared by every task in the process
        _DATA[key] = data
        return data


_WINDOWS: dict[tuple[int, int, int, torch.device], torch.Tensor] = {}


def _windows(padded_length: int, kernel: int, stride: int, device: torch.device) -> torch.Tensor:
    """Positions read by each output of a strided 1-D convolution, flattened: ``[0..k), [s..s+k), ...``."""
    key = (padded_length, kernel, stride, device)
    idx = _WINDOWS.get(key)
    if idx is None:
        out_len = (padded_length - kernel) // stride + 1
        idx = (torch.arange(out_len)[:, None] * stride + torch.arange(kernel)[None, :]).reshape(-1).to(device)
        # Benign race: two threads may both build the same small tensor; either copy is correct.
        _WINDOWS[key] = idx
    return idx


def _conv1d_channels_last(h: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """``conv`` applied to channel-last input ``(batch, length, channels)`` as one gather and one matrix product.

    Same result as ``conv(h.transpose(1, 2)).transpose(1, 2)`` up to float rounding. For this model's tiny
    shapes (batch 32, <= 25 channels) torch's CPU convolution kernels spend most of their time in per-call setup,
    and their backward pass is slower still; a gather plus ``addmm`` (whose backward is two small matrix products
    and an ``index_add``) trains about 1.7x faster on one core.
    """
    kernel, stride, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    if pad:
        h = F.pad(h, (0, 0, pad, pad))
    batch, length, channels = h.shape
    idx = _windows(length, kernel, stride, h.device)
    out_len = idx.numel() // kernel
    cols = h.index_select(1, idx).view(batch * out_len, kernel * channels)  # rows: one window, kernel-major
    weight = conv.weight.permute(0, 2, 1).reshape(conv.out_channels, kernel * channels)
    return torch.addmm(conv.bias, cols, weight.t()).view(batch, out_len, conv.out_channels)


class ConvBase(nn.Module):
    """The MNIST-1D paper's small CNN: three strided 1-D convolutions (25 channels, ReLU) and a linear head.

    Input ``(batch, 40)`` or ``(batch, 1, 40)``; lengths go 40 -> 19 -> 10 -> 5, so the head sees 25 * 5 = 125
    features; 5,210 parameters. Parameters, ``state_dict`` and outputs are those of the reference model
    (``nn.Conv1d`` layers applied in order); only the way the convolutions are computed differs: with autograd on
    (training) they run as gather + matrix product on channel-last activations, which is much faster for batches
    this small, and with autograd off (evaluation of thousands of examples) through ``torch.nn.functional.conv1d``.
    """

    def __init__(self, output_size: int = 10, channels: int = 25, input_length: int = 40):
        super().__init__()
        self.input_length = int(input_length)
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        length = input_length
        for kernel in (5, 3, 3):
            length = (length + 2 - kernel) // 2 + 1
        self.linear = nn.Linear(channels * length, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            h = x.reshape(x.shape[0], x.shape[-1], 1)
            h = _conv1d_channels_last(h, self.conv1).relu()
            h = _conv1d_channels_last(h, self.conv2).relu()
            h = _conv1d_channels_last(h, self.conv3).relu()
            h = h.transpose(1, 2)  # back to (batch, channels, length) so the head sees the reference layout
        else:
            h = x.reshape(x.shape[0], 1, x.shape[-1])
            h = self.conv1(h).relu()
            h = self.conv2(h).relu()
            h = self.conv3(h).relu()
        return self.linear(h.flatten(1))


class _BatchedConvBase(_BatchedModel):
    """:class:`ConvBase` for many clients at once: every layer is one batched matrix product over the clients.

    Activations are laid out ``(clients, channels, length, batch)``. In that layout each convolution is a gather
    of the windows along the length axis (windows ordered kernel tap first) and one ``baddbmm`` with the weight as
    stored, ``(out, in * kernel)``; the head reads ``(channels * length, batch)``, the reference flatten order,
    with its weight as stored; logits come out as ``(clients, classes, batch)``, as cross-entropy takes them. So
    no parameter is ever permuted, and the matrix products have the long ``length * batch`` axis last, the shape
    that CPU matrix kernels handle fastest. The first layer's windows are cut once per chunk for all examples.
    """

    def __init__(self, model: ConvBase):
        convs = [model.conv1, model.conv2, model.conv3]
        if convs[0].in_channels != 1:
            raise ValueError("the batched ConvBase expects one input channel")
        self.channels = [c.out_channels for c in convs]
        self.layers: list[tuple[int, int, torch.Tensor]] = []  # (padding, output length, window index)
        length = model.input_length
        for conv in convs:
            kernel, stride, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
            out_len = (length + 2 * pad - kernel) // stride + 1
            # Window positions ordered (kernel tap, output position): the gathered rows then are (in, tap) blocks
            # of the weight's (out, in * kernel) layout, each a contiguous run of positions.
            index = (torch.arange(kernel)[:, None] + torch.arange(out_len)[None, :] * stride).reshape(-1)
            self.layers.append((pad, out_len, index))
            length = out_len
        self.kernel1 = convs[0].kernel_size[0]
        self.classes = model.linear.out_features
        self.shapes = [
            (convs[0].out_channels, self.kernel1),
            (convs[0].out_channels, 1),
            (convs[1].out_channels, convs[1].in_channels * convs[1].kernel_size[0]),
            (convs[1].out_channels, 1),
            (convs[2].out_channels, convs[2].in_channels * convs[2].kernel_size[0]),
            (convs[2].out_channels, 1),
            (model.linear.out_features, model.linear.in_features),
            (model.linear.out_features, 1),
        ]

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        pad, _, index = self.layers[0]
        x = x.reshape(x.shape[0], -1)
        if pad:
            x = F.pad(x, (pad, pad))
        return x.index_select(1, index)  # (examples, kernel * out_len): the first layer's windows, tap-major

    def forward(self, params: list[torch.Tensor], x: torch.Tensor, clients: int, batch: int) -> torch.Tensor:
        w1, b1, w2, b2, w3, b3, wl, bl = params
        length = self.layers[0][1]
        cols = x.view(clients, batch, self.kernel1, length).permute(0, 2, 3, 1).reshape(clients, self.kernel1, -1)
        h = torch.baddbmm(b1, w1, cols).relu_().view(clients, self.channels[0], length, batch)
        for (pad, out_len, index), w, b in ((self.layers[1], w2, b2), (self.layers[2], w3, b3)):
            if pad:
                h = F.pad(h, (0, 0, pad, pad))
            cols = h.index_select(2, index).view(clients, w.shape[2], out_len * batch)
            h = torch.baddbmm(b, w, cols).relu_().view(clients, w.shape[1], out_len, batch)
        return torch.baddbmm(bl, wl, h.view(clients, -1, batch))


class MNIST1D(LearningTask):
    """MNIST-1D split among clients; the fedhive benchmark task.

    Before partitioning, ``validation_size`` examples are drawn from the training pool as the server's validation
    batch; the clients share the rest. The test set is the generator's own held-out 20 %.

    Parameters
    ----------
    num_clients, partition, alpha, seed, device
        See :class:`~fedhive.tasks.base.LearningTask`. ``seed`` picks the validation batch and the partition.
    num_samples : int, optional
        Generator sample count (default 10,000, as in BENCHMARK.md).
    train_split : float, optional
        Generator train fraction (default 0.8).
    data_seed : int, optional
        Generator seed (default 0); separate from ``seed`` so the data set stays fixed while partitions vary.
    validation_size : int, optional
        Size of the validation batch (default 256; 0 for none).
    min_client_size : int, optional
        Smallest client for ``"dirichlet"`` and ``"size"`` partitions (default 10).
    size_sigma : float, optional
        Log-normal sigma of client sizes for ``partition="size"`` (default 1.0).

    Notes
    -----
    Default learning rate 0.2 (plain SGD, batch 32), from a sweep on this task (seed 0):

    * one client with all the data: test accuracy after 1,500 / 2,500 steps was 0.48 / 0.78 at lr 0.05,
      0.75 / 0.87 at 0.1, 0.87 / 0.94 at 0.2 and 0.88 / 0.91 at 0.5 (noisier, plateaus lower);
    * synchronous FedAvg, 50 clients, Dirichlet(0.5), 10 clients a round, 20 local steps: accuracy after 300
      rounds 0.82 (lr 0.05), 0.89 (0.1), 0.92 (0.2), 0.93 (0.3), 0.94 (0.5); 85 % is passed by round 120 at
      0.2 and by round 90 at 0.3 and 0.5.

    0.2 is the best single-client rate and close to the best synchronous one; larger rates help synchronous
    averaging a little but make each client's model noisier, which stale asynchronous updates amplify. Pass
    ``lr`` in the config to change it.
    """

    name = "mnist1d"
    default_lr = 0.2
    default_batch_size = 32
    model_uses_rng = False  # no dropout: training needs no private torch RNG state, so threads never wait

    def __init__(
        self,
        *,
        num_clients: int,
        partition: str = "dirichlet",
        alpha: float = 0.5,
        seed: int = 0,
        device: str | torch.device = "cpu",
        num_samples: int = 10_000,
        train_split: float = 0.8,
        data_seed: int = 0,
        validation_size: int = 256,
        min_client_size: int = 10,
        size_sigma: float = 1.0,
    ):
        super().__init__(num_clients=num_clients, partition=partition, alpha=alpha, seed=seed, device=device)
        self.num_samples = integer("num_samples", num_samples, low=100)
        self.train_split = number("train_split", train_split, low=0, high=1, low_open=True, high_open=True)
        self.data_seed = integer("data_seed", data_seed, low=0)
        self.validation_size = integer("validation_size", validation_size, low=0)
        self.min_client_size = integer("min_client_size", min_client_size, low=1)
        self.size_sigma = number("size_sigma", size_sigma, low=0)

        data = load_mnist1d(self.num_samples, self.train_split, self.data_seed)
        x, y = data["x"], data["y"]
        n = len(y)
        if self.validation_size >= n:
            raise ValueError(f"validation_size must be smaller than the {n} training examples, got {validation_size}")

        # Two independent streams from the one seed: changing how clients are split never moves the validation set.
        val_rng = np.random.default_rng([self.seed, 1])
        part_rng = np.random.default_rng([self.seed, 2])
        perm = val_rng.permutation(n)
        val_idx, pool = np.sort(perm[: self.validation_size]), np.sort(perm[self.validation_size :])
        if partition == "iid":
            local = part.iid(len(pool), self.num_clients, part_rng)
        elif partition == "dirichlet":
            local = part.dirichlet_label_skew(y[pool], self.num_clients, self.alpha, part_rng, self.min_client_size)
        else:
            local = part.size_skew(len(pool), self.num_clients, part_rng, self.size_sigma, self.min_client_size)
        #: Training-set indices (into the generator's ``x``) of each client.
        self.client_indices: list[np.ndarray] = [pool[i] for i in local]
        self.validation_indices: np.ndarray = val_idx

        # Preloaded per-client tensors: training copies nothing but the mini-batches.
        self._clients = [
            (torch.from_numpy(x[idx].copy()), torch.from_numpy(y[idx].copy())) for idx in self.client_indices
        ]
        self._test = (torch.from_numpy(data["x_test"].copy()), torch.from_numpy(data["y_test"].copy()))
        self._validation = (
            (torch.from_numpy(x[val_idx].copy()), torch.from_numpy(y[val_idx].copy()))
            if self.validation_size
            else None
        )

    def build_model(self) -> nn.Module:
        return ConvBase(output_size=10, channels=25, input_length=40)

    def train_batch(self, jobs: Sequence[TrainJob]) -> list[tuple[list[np.ndarray], dict[str, Any]]]:
        """Batched :meth:`~fedhive.tasks.base.LearningTask.train_batch`: all clients of a step in one pass.

        Same contract as the base method. Up to 16 clients train together, their parameters stacked, each step
        one batched forward and backward pass (see ``_BatchedConvBase``); about 2-3x faster per update than
        separate :meth:`train` calls on one core. Falls back to the base loop for subclasses that change the model,
        the loss or :meth:`train`, and off the CPU.
        """
        model = self._batched_model(MNIST1D, lambda: _BatchedConvBase(self._build_seeded(0)))
        if model is None:
            return super().train_batch(jobs)
        return self._train_batched(jobs, model)

    def num_examples(self, client: int) -> int:
        return int(len(self.client_indices[self._check_client(client)]))

    def client_data(self, client: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._clients[self._check_client(client)]

    def test_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._test

    def validation_batch(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``validation_size`` training-pool examples held back from every client (not from the test set)."""
        return self._validation
