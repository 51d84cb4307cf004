"""The mini-batch schedule of local training: which examples each step of a run sees.

Both :meth:`~fedhive.tasks.base.LearningTask.train` and the batched engine (:mod:`fedhive.tasks.batched`) draw
their batches here, so a job trains on the same batches whichever path runs it.
"""

from __future__ import annotations

import torch

__all__ = ["batch_schedule"]

# torch.Generator.manual_seed takes seeds below 2**63; any int seed is folded into that range.
_SEED_MASK = (1 << 63) - 1


def batch_schedule(seed: int, examples: int, batch: int, batches: int) -> torch.Tensor:
    """Example indices of ``batches`` mini-batches of ``batch`` examples, from per-epoch random permutations.

    The stream is ``ceil(batches * batch / examples)`` permutations of ``range(examples)``, concatenated, drawn
    from a ``torch.Generator`` seeded with ``seed`` alone, and cut into consecutive batches: every example is seen
    once per epoch, and a batch may straddle two epochs so that every step sees a full batch.

    Parameters
    ----------
    seed : int
        The only source of randomness (folded into torch's 63-bit seed range).
    examples : int
        Training examples of the client, >= 1.
    batch : int
        Examples per batch, in ``[1, examples]``.
    batches : int
        Number of batches, >= 1.

    Returns
    -------
    torch.Tensor
        ``(batches, batch)`` int64 indices on the CPU; row ``s`` is step ``s``'s batch.
    """
    gen = torch.Generator()
    gen.manual_seed(seed & _SEED_MASK)
    needed = batches * batch
    epochs = -(-needed // examples)
    order = torch.cat([torch.randperm(examples, generator=gen) for _ in range(epochs)])[:needed]
    return order.view(batches, batch)
