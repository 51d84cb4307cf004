"""Fixtures shared by the unit tests: Flower's task identity for messages made outside its runtime, and a live
model store on 127.0.0.1."""

from __future__ import annotations

import pytest


@pytest.fixture
def flower_identity():
    """Messages made outside Flower's runtime need the run/task/node identity the runtime sets; restored after."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    try:
        yield TaskIdentity
    finally:
        TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


@pytest.fixture
def store():
    """A model store on a free loopback port, stopped afterwards."""
    from fedhive.server.model_store import ModelStore

    s = ModelStore("127.0.0.1:0")
    try:
        yield s
    finally:
        s.stop()
