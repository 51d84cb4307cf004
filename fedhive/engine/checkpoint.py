"""Atomic checkpoints in numpy's ``.npz`` format: arrays as arrays, everything else as JSON. Never pickle.

A state is a tree of dicts (and other mappings), lists, tuples, JSON scalars and numpy arrays (what
``Strategy.state_dict`` and the orchestrator produce). ``encode`` replaces each array by a reference and keeps dict
keys' types (node ids are ints); ``decode`` reverses it exactly. An array the state refers to several times (the
global model a strategy holds and that the tasks in flight were sent with, a base model shared by many buffered
updates) is stored once, and decodes to one shared array. Files are written to a temporary name, fsynced, then renamed, so a crash
leaves either the old checkpoint or the new one, never half of one (:func:`remove_leftovers` deletes the temporary
file such a crash leaves behind).

Each checkpoint may carry the run's *fingerprint* (a JSON object saying which run wrote it: task, tensors, strategy
and its config, seed, partitioning) in its own ``__fingerprint__`` entry, so that it can be read without the state.
Files written before fingerprints existed have none (:func:`fingerprint_of` gives ``None``); older fedhive
versions ignore the entry. A file on disk is untrusted: :func:`read`, :func:`load` and :func:`fingerprint_of` raise
``ValueError`` naming the file for whatever is wrong with it (truncated, not a zip, missing entries, bad JSON,
dangling array references, another format).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

FORMAT = "fedhive-checkpoint/2"
_META = "__meta__"
_FINGERPRINT = "__fingerprint__"
_NAME = re.compile(r"^ckpt-(\d{10})\.npz$")
_TEMPORARY = re.compile(r"^\.ckpt-\d{10}\.npz\..+\.tmp$")  # what save() writes before its rename

log = logging.getLogger("fedhive.checkpoint")


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


def normalize_fingerprint(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """``fingerprint`` as it reads back from a file (tuples become lists, numpy scalars plain numbers).

    Values that are not JSON (a strategy option holding an object, say) are kept as their ``str``.
    """
    if not isinstance(fingerprint, Mapping):
        raise TypeError(f"a run fingerprint is a mapping of names to JSON values, got {type(fingerprint).__name__}")
    return json.loads(json.dumps(dict(fingerprint), sort_keys=True, default=_plain))


def _plain(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


def differences(mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[str]:
    """The keys on which two fingerprints differ, each as ``key: this run X, the checkpoint Y``."""
    out = []
    for k in sorted(set(mine) | set(theirs)):
        a, b = mine.get(k, "<absent>"), theirs.get(k, "<absent>")
        if a != b:
            out.append(f"{k}: this run {_short(a)}, the checkpoint {_short(b)}")
    return out


def _short(x: Any, limit: int = 120) -> str:
    text = json.dumps(x, sort_keys=True, default=str) if not isinstance(x, str) else repr(x)
    return text if len(text) <= limit else text[:limit] + "..."


def save(path: str | Path, state: Any, fingerprint: Mapping[str, Any] | None = None) -> Path:
    """Write ``state`` (and the run's ``fingerprint``, if given) to ``path`` atomically.

    A temporary file in the same folder is written, fsynced and renamed over ``path``, then the folder is fsynced.
    Raises ``TypeError`` for a state that is not arrays, mappings, lists and scalars, and ``OSError`` when the
    disk refuses (full, read-only); either way nothing is left behind and an earlier file at ``path`` is intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tree, arrays = encode(state)
    meta = json.dumps({"format": FORMAT, "state": tree}, allow_nan=True).encode()
    arrays[_META] = np.frombuffer(meta, dtype=np.uint8)
    if fingerprint is not None:
        fp = json.dumps(normalize_fingerprint(fingerprint), sort_keys=True).encode()
        arrays[_FINGERPRINT] = np.frombuffer(fp, dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


class _Refused(ValueError):
    """A checkpoint that was read fine and is refused (another format); the message already names the file."""


def _json_entry(z: Any, name: str) -> Any:
    raw = z[name]
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ValueError(f"entry {name} is {raw.dtype} of shape {raw.shape}, not the uint8 bytes of a JSON text")
    return json.loads(raw.tobytes().decode())


def _open(path: Path) -> Any:
    z = np.load(path, allow_pickle=False)
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError("it is a single .npy array, not an .npz archive")
    return z


def _guarded(path: Path, what: str, body: Any) -> Any:
    try:
        return body()
    except _Refused:
        raise
    except Exception as exc:  # anything a damaged or foreign file makes numpy, zipfile, json or decode raise
        raise ValueError(f"cannot read checkpoint {path} ({what}): {type(exc).__name__}: {exc}; it is damaged or "
                         "not a fedhive checkpoint") from exc


def read(path: str | Path) -> tuple[Any, dict[str, Any] | None]:
    """The state and the fingerprint (``None`` where the file has none) of a checkpoint written by ``save``.

    ``allow_pickle=False``: a tampered file cannot run code. Raises ``ValueError`` naming the file when it is
    missing, damaged, not a fedhive checkpoint, or of another format.
    """
    path = Path(path)

    def body() -> tuple[Any, dict[str, Any] | None]:
        with _open(path) as z:
            if _META not in z.files:
                raise ValueError(f"no {_META} entry")
            meta = _json_entry(z, _META)
            if not isinstance(meta, dict) or "state" not in meta:
                raise ValueError(f"{_META} is not an object with a 'state'")
            if meta.get("format") != FORMAT:
                raise _Refused(f"{path} has format {meta.get('format')!r}; this fedhive reads {FORMAT!r}: resume it "
                               "with the fedhive that wrote it, or start a new run (resume=false)")
            fingerprint = _json_entry(z, _FINGERPRINT) if _FINGERPRINT in z.files else None
            if fingerprint is not None and not isinstance(fingerprint, dict):
                raise ValueError(f"{_FINGERPRINT} is not a JSON object")
            arrays = {k: z[k] for k in z.files if k not in (_META, _FINGERPRINT)}
        return decode(meta["state"], arrays), fingerprint

    return _guarded(path, "state", body)


def load(path: str | Path) -> Any:
    """The state of a checkpoint written by ``save`` (see :func:`read`)."""
    return read(path)[0]


def fingerprint_of(path: str | Path) -> dict[str, Any] | None:
    """The fingerprint of a checkpoint, reading only that entry; ``None`` for a file written without one.

    Raises ``ValueError`` naming the file when it cannot be read.
    """
    path = Path(path)

    def body() -> dict[str, Any] | None:
        with _open(path) as z:
            if _META not in z.files:
                raise ValueError(f"no {_META} entry")
            if _FINGERPRINT not in z.files:
                return None
            fingerprint = _json_entry(z, _FINGERPRINT)
        if not isinstance(fingerprint, dict):
            raise ValueError(f"{_FINGERPRINT} is not a JSON object")
        return fingerprint

    return _guarded(path, "fingerprint", body)


def checkpoint_path(directory: str | Path, version: int) -> Path:
    return Path(directory) / f"ckpt-{version:010d}.npz"


def checkpoints(directory: str | Path) -> list[Path]:
    """The checkpoint files in ``directory`` (``ckpt-<version>.npz``), oldest version first; none if it is absent."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = sorted((int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name)))
    return [p for _, p in found]


def latest(directory: str | Path) -> Path | None:
    """The newest checkpoint in ``directory`` (highest version), or ``None``."""
    found = checkpoints(directory)
    return found[-1] if found else None


_ANY: Any = object()


def prune(directory: str | Path, keep: int, fingerprint: Mapping[str, Any] | None = _ANY) -> None:
    """Delete all but the ``keep`` newest checkpoints (``keep=0``: delete none).

    With ``fingerprint`` (a mapping, or ``None`` for files written without one), only the checkpoints of that run
    count and are deleted: another run's files and files that cannot be read are left alone.
    """
    found = checkpoints(directory)
    if fingerprint is not _ANY:
        wanted = None if fingerprint is None else normalize_fingerprint(fingerprint)
        mine = []
        for p in found:
            try:
                if fingerprint_of(p) == wanted:
                    mine.append(p)
            except ValueError:
                continue
        found = mine
    for p in found[:-keep] if keep > 0 else []:
        p.unlink(missing_ok=True)


def set_aside(directory: str | Path) -> Path | None:
    """Move every checkpoint in ``directory`` into a new ``previous-<UTC time>`` folder under it; that folder.

    ``None`` (and nothing moved) when there is no checkpoint. For a new run in a folder that holds an earlier run's
    checkpoints: they are kept, out of the way of the new run's resume and pruning. Raises ``OSError`` when the
    files cannot be moved.
    """
    found = checkpoints(directory)
    if not found:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = Path(directory) / f"previous-{stamp}"
    n = 1
    while target.exists():
        n += 1
        target = Path(directory) / f"previous-{stamp}-{n}"
    target.mkdir()
    for p in found:
        os.replace(p, target / p.name)
    return target


def remove_leftovers(directory: str | Path) -> list[Path]:
    """Delete the temporary files an interrupted :func:`save` left in ``directory``; the files removed."""
    d = Path(directory)
    if not d.is_dir():
        return []
    removed = []
    for p in sorted(d.iterdir()):
        if _TEMPORARY.match(p.name) and p.is_file():
            try:
                p.unlink()
            except OSError as exc:
                log.warning("could not remove the leftover temporary checkpoint %s: %s", p, exc)
                continue
            removed.append(p)
    return removed
