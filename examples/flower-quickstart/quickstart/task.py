"""The model, the data and the training loop, in Flower's quickstart layout.

The data is generated, so the example runs offline: 60 features, labels from a fixed random "teacher" network,
each partition drawn with its own seed and its own skew of the feature means (so clients are not identical).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, MetricRecord

FEATURES, CLASSES = 60, 10


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(FEATURES, 32)
        self.fc2 = nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _teacher() -> torch.Tensor:
    return torch.randn(FEATURES, CLASSES, generator=torch.Generator().manual_seed(7))


def _draw(n: int, seed: int, shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=g) + shift
    return x, (x @ _teacher()).argmax(dim=1)


def load_data(partition_id: int, num_partitions: int, n: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    """Partition ``partition_id`` of ``num_partitions``: its own samples, with a per-partition shift."""
    shift = 0.3 * (partition_id / max(num_partitions - 1, 1) - 0.5)
    return _draw(n, 1000 + partition_id, shift)


def load_centralized_testset(n: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    return _draw(n, 999)


def train(net: Net, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, batch: int = 32) -> float:
    """``steps`` SGD steps over shuffled mini-batches; the mean training loss."""
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    order = torch.randperm(len(x))
    losses = []
    net.train()
    for i in range(steps):
        idx = order[(i * batch) % len(x):][:batch]
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return sum(losses) / max(len(losses), 1)


@torch.no_grad()
def test(net: Net, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    net.eval()
    out = net(x)
    return nn.functional.cross_entropy(out, y).item(), (out.argmax(dim=1) == y).float().mean().item()


def central_evaluate(server_round: int, arrays: "ArrayRecord") -> "MetricRecord":
    """The ServerApp's evaluate_fn: the global model on the held-out set (the same for every strategy)."""
    from flwr.app import MetricRecord

    model = Net()
    model.load_state_dict(arrays.to_torch_state_dict())
    loss, acc = test(model, *load_centralized_testset())
    return MetricRecord({"accuracy": acc, "loss": loss})
