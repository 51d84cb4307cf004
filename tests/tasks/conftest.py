"""Keep the MNIST-1D disk cache of these tests out of the user's home directory."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_fedhive_cache(tmp_path_factory):
    old = os.environ.get("FEDHIVE_CACHE")
    os.environ["FEDHIVE_CACHE"] = str(tmp_path_factory.mktemp("fedhive-cache"))
    yield
    if old is None:
        os.environ.pop("FEDHIVE_CACHE", None)
    else:
        os.environ["FEDHIVE_CACHE"] = old
