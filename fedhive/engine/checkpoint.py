"""Atomic checkpoints in numpy's ``.npz`` format: arrays as arrays, everything else as JSON. Never pickle.

A state is a tree of dicts (and other mappings), lists, tuples, JSON scalars and numpy arrays (what
``Strategy.state_dict`` and the orchestrator produce). ``encode`` replaces each array by a reference and keeps dict
keys' types (node ids are ints); ``decode`` reverses it exactly. An array the state refers to several times (the
global model a strategy holds and that the tasks in flight were sent with, a base model shared by many buffered
updates) is stored once, and decodes to one shared array. Files are written to a temporary name, fsynced, then renamed, so a crash
leaves either the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

FORMAT = "fedhive-checkpoint/2"
_META = "__meta__"
_NAME = re.compile(r"^ckpt-(\d{10})\.npz$")


def encode(state: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """Split ``state`` into a JSON-able tree and a dict of arrays (each array object once)."""
    arrays: dict[str, np.ndarray] = {}
    keys: dict[int, str] = {}  # id of an array -> its key (the arrays stay referenced by ``arrays`` meanwhile)

    def enc(x: Any) -> Any:
        if isinstance(x, np.ndarray):
            key = keys.get(id(x))
            if key is None:
                key = keys[id(x)] = f"a{len(arrays)}"
                arrays[key] = x
            return {"__array__": key}
        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, Mapping):
            if all(isinstance(k, str) for k in x) and "__array__" not in x and "__dict__" not in x:
                return {k: enc(v) for k, v in x.items()}
            return {"__dict__": [[enc(k), enc(v)] for k, v in x.items()]}
        if isinstance(x, (list, tuple)):
            return [enc(v) for v in x]
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"cannot checkpoint a {type(x).__name__}; use numpy arrays, dicts, lists and scalars")

    return enc(state), arrays


def decode(tree: Any, arrays: dict[str, np.ndarray]) -> Any:
    """Rebuild the state that ``encode`` split."""

    def dec(x: Any) -> Any:
        if isinstance(x, dict):
            if "__array__" in x:
                return arrays[x["__array__"]]
            if "__dict__" in x:
                return {_key(dec(k)): dec(v) for k, v in x["__dict__"]}
            return {k: dec(v) for k, v in x.items()}
        if isinstance(x, list):
            return [dec(v) for v in x]
        return x

    return dec(tree)


def _key(k: Any) -> Any:
    return tuple(k) if isinstance(k, list) else k


def save(path: str | Path, state: Any) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename, fsync of the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tree, arrays = encode(state)
    meta = json.dumps({"format": FORMAT, "state": tree}, allow_nan=True).encode()
    arrays[_META] = np.frombuffer(meta, dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load(path: str | Path) -> Any:
    """Read a checkpoint written by ``save`` (``allow_pickle=False``: a tampered file cannot run code)."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as z:
        if _META not in z.files:
            raise ValueError(f"{path} is not a fedhive checkpoint (no {_META} entry)")
        meta = json.loads(z[_META].tobytes().decode())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} has format {meta.get('format')!r}; this fedhive reads {FORMAT!r}: resume it "
                             "with the fedhive that wrote it, or start a new run (resume=false)")
        arrays = {k: z[k] for k in z.files if k != _META}
    return decode(meta["state"], arrays)


def checkpoint_path(directory: str | Path, version: int) -> Path:
    return Path(directory) / f"ckpt-{version:010d}.npz"


def latest(directory: str | Path) -> Path | None:
    """The newest checkpoint in ``directory`` (highest version), or ``None``."""
    d = Path(directory)
    if not d.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name)))
    return found[-1][1] if found else None


def prune(directory: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints."""
    d = Path(directory)
    found = sorted((int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name)))
    for _, p in found[:-keep] if keep > 0 else []:
        p.unlink(missing_ok=True)
