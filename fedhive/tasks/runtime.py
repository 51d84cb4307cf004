"""Process-local machinery of a task: model replicas, device data caches, and torch's process-wide state.

Nothing here travels with a pickled task: replicas, caches and locks belong to one process and are rebuilt on
demand by the receiver (see ``LearningTask.__getstate__``). The other half of this module guards torch state that
is shared by the whole process, the intra-op thread count and the global RNG, so that concurrent training calls
neither see nor disturb each other's.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from typing import Generic, TypeVar

import numpy as np
import torch
from torch import nn

from fedhive.tasks.schedule import _SEED_MASK

__all__: list[str] = []

_V = TypeVar("_V")

# Serialises training of models that use torch's (process-wide) RNG; see LearningTask.model_uses_rng.
_GLOBAL_RNG_LOCK = threading.RLock()

# train_batch runs on one torch thread; see _one_torch_thread.
_THREADS_LOCK = threading.Lock()
_THREADS_USERS = 0
_THREADS_SAVED = 1


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run the body with torch's intra-op thread count set to 1, then put the caller's count back.

    torch keeps the count partly per thread (OpenMP) and partly per process (MKL, threads started later), so
    overlapping calls from several threads are reference-counted: every caller sets its own thread to 1 on entry,
    and only the last one to leave restores the count it found, so no caller's ops ever run multi-threaded
    because another caller left first. (A thread that left earlier during such an overlap stays at 1.)
    """
    global _THREADS_USERS, _THREADS_SAVED
    with _THREADS_LOCK:
        saved = torch.get_num_threads()
        if saved != 1:
            torch.set_num_threads(1)
        if _THREADS_USERS == 0:
            _THREADS_SAVED = saved
        _THREADS_USERS += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS_USERS -= 1
            if _THREADS_USERS == 0 and _THREADS_SAVED != 1:
                torch.set_num_threads(_THREADS_SAVED)


@contextmanager
def _private_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run the body under a torch global RNG state derived from ``seed``, then restore the caller's state.

    torch's CPU generator is process-wide, so the body holds :data:`_GLOBAL_RNG_LOCK` throughout: two threads
    reseeding it at once would each see the other's random numbers.
    """
    with _GLOBAL_RNG_LOCK:
        cpu_state = torch.get_rng_state()
        cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        # A different stream from the batch-order generator, so the two are not correlated.
        derived = (seed * 6364136223846793005 + 1442695040888963407) & _SEED_MASK
        torch.default_generator.manual_seed(derived)
        if cuda_state is not None:
            torch.cuda.manual_seed(derived)
        try:
            yield
        finally:
            torch.set_rng_state(cpu_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state(cuda_state, device)


class _Replica:
    """One model instance with cached views of its state, owned by one thread."""

    def __init__(self, model: nn.Module, device: torch.device):
        self.model = model
        state = model.state_dict(keep_vars=False)
        # state_dict() tensors share storage with the live parameters and buffers, so writing into them (or into
        # numpy views of them on the CPU) updates the model without rebuilding anything.
        self.tensors: list[torch.Tensor] = [t for t in state.values()]
        self.shapes: list[tuple[int, ...]] = [tuple(t.shape) for t in self.tensors]
        self.views: list[np.ndarray] | None = (
            [t.numpy() for t in self.tensors] if device.type == "cpu" else None
        )
        self.params: list[nn.Parameter] = [p for p in model.parameters() if p.requires_grad]

    def load(self, arrays: Sequence[np.ndarray]) -> None:
        """Copy ``arrays`` into the model in place, checking count and shapes."""
        if len(arrays) != len(self.tensors):
            raise ValueError(f"expected {len(self.tensors)} parameter arrays (state_dict order), got {len(arrays)}")
        for i, (a, shape) in enumerate(zip(arrays, self.shapes)):
            a = np.asarray(a)
            # Compare shapes explicitly: copyto would silently broadcast a wrong-shaped array.
            if a.shape != shape:
                raise ValueError(f"parameter array {i} has shape {a.shape}, the model expects {shape}")
        if self.views is not None:
            # numpy copy into a view of the tensor: no torch wrapper needed, accepts read-only inputs (frombuffer)
            # without torch's non-writable warning, and casts float32 into integer buffers such as BatchNorm's count.
            for view, a in zip(self.views, arrays):
                np.copyto(view, a, casting="unsafe")
        else:
            with torch.no_grad():
                for t, a in zip(self.tensors, arrays):
                    t.copy_(torch.tensor(np.asarray(a)), non_blocking=False)

    def dump(self) -> list[np.ndarray]:
        """Fresh float32 copies of the model state; they share no memory with torch."""
        if self.views is not None:
            return [v.astype(np.float32, copy=True) for v in self.views]
        return [t.detach().to("cpu", dtype=torch.float32, copy=True).numpy() for t in self.tensors]


class _LRUCache(Generic[_V]):
    """A thread-safe cache of the ``capacity`` most recently used values, e.g. client data on an accelerator."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._lock = threading.Lock()
        self._items: OrderedDict[Hashable, _V] = OrderedDict()

    def get(self, key: Hashable, make: Callable[[], _V]) -> _V:
        """The cached value of ``key``, or ``make()``, cached.

        ``make`` runs outside the lock, so threads filling different keys do not queue behind each other's copies;
        two threads missing the same key both make it, and the later one's value is kept.
        """
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        value = make()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)
