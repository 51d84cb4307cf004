"""FedCompass's ``client_weights="group"`` option ([OURS]): each step is normalised over the updates it merges."""

import numpy as np
import pytest

from driven import Driven
from fedhive.strategies import FedCompass
from fedhive.strategies.base import ClientInfo, Update

C = [ClientInfo(0, 10, "gpu"), ClientInfo(1, 30, "cpu")]


@pytest.mark.parametrize("weights,expected", [("samples", 0.25 * 0.5), ("equal", 0.5 * 0.5), ("group", 0.5)])
def test_first_arrival_step_size(weights, expected):
    s = Driven(FedCompass(preset="paper", alpha=0.5, client_weights=weights, speed_model="per_step", q_min=2, q_max=4))
    s.start([np.zeros(3)], C, 0.0)
    for c in C:
        assert s.on_idle(c, 0.0).config["local_steps"] == 4
    s.on_update(Update(0, 0, [np.ones(3)], 10, {}), 1.0)
    np.testing.assert_allclose(s.params[0], np.full(3, expected))


def test_unknown_weighting_lists_the_accepted_ones():
    with pytest.raises(ValueError, match="samples, equal, group"):
        FedCompass(client_weights="uniform")
