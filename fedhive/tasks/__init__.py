"""Learning tasks: a model, its data split among clients, and local training and evaluation.

Built-in tasks are named; any other task is named as ``"package.module:attribute"``, where the attribute is a
:class:`LearningTask` subclass or a factory that takes the same keywords and returns a task::

    task = load_task("mnist1d", num_clients=50, partition="dirichlet", alpha=0.5, seed=0)
    task = load_task("my_project.tasks:CIFARTask", num_clients=10)
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from fedhive.tasks.base import LearningTask, TrainJob

__all__ = ["LearningTask", "TrainJob", "load_task", "BUILTIN_TASKS"]

#: Built-in task names and where they live (imported only when asked for).
BUILTIN_TASKS: dict[str, str] = {
    "mnist1d": "fedhive.tasks.mnist1d:MNIST1D",
    "synthetic": "fedhive.tasks.synthetic:Synthetic",
}


def _spec_help() -> str:
    return (
        f"built-in tasks are {sorted(BUILTIN_TASKS)}; any other task is named 'package.module:attribute', where the "
        "attribute is a LearningTask subclass or a callable that takes the task keywords and returns a LearningTask"
    )


def _resolve(spec: str) -> Any:
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise ValueError(f"unknown task {spec!r}: {_spec_help()}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"task {spec!r}: cannot import module {module_name!r} ({exc}); {_spec_help()}") from exc
    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"task {spec!r}: module {module_name!r} has no attribute {attr_path!r}") from None
    return obj


def _check_keywords(target: Any, spec: str, kwargs: dict[str, Any]) -> None:
    """Turn unknown or missing keywords into a ValueError that lists the accepted ones (not a bare TypeError)."""
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return  # builtins and some C callables have no signature; let the call itself complain
    params = list(sig.parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    accepted = [p.name for p in params if p.kind in named]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"task {spec!r} does not accept {unknown}; accepted keywords: {accepted}")
    missing = [
        p.name
        for p in params
        if p.default is inspect.Parameter.empty
        and p.kind in named
        and p.name not in kwargs
    ]
    if missing:
        raise ValueError(f"task {spec!r} needs {missing}; accepted keywords: {accepted}")


def load_task(spec: str, **kwargs: Any) -> LearningTask:
    """Build the task ``spec`` with ``kwargs``.

    Parameters
    ----------
    spec : str
        A built-in name (see :data:`BUILTIN_TASKS`, case-insensitive) or ``"package.module:attribute"``.
    **kwargs
        Task keywords: ``num_clients`` (required), ``partition``, ``alpha``, ``seed`` and task-specific ones.

    Returns
    -------
    LearningTask

    Raises
    ------
    ValueError
        Unknown name, unimportable module, missing attribute, an attribute that is not a task or task factory,
        unknown keywords, or keyword values the task rejects.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"task must be a non-empty string, got {spec!r}; {_spec_help()}")
    spec = spec.strip()
    builtin = BUILTIN_TASKS.get(spec.lower())
    target = _resolve(builtin if builtin is not None else spec)
    if inspect.isclass(target):
        if not issubclass(target, LearningTask):
            raise ValueError(f"task {spec!r} names class {target.__name__}, which is not a LearningTask subclass")
        if inspect.isabstract(target):
            raise ValueError(
                f"task {spec!r} names {target.__name__}, which is abstract (it leaves methods unimplemented)"
            )
        _check_keywords(target, spec, kwargs)  # the class signature, without self
    elif callable(target):
        _check_keywords(target, spec, kwargs)
    else:
        raise ValueError(f"task {spec!r} names a {type(target).__name__}, not a LearningTask subclass or factory")
    task = target(**kwargs)
    if not isinstance(task, LearningTask):
        raise ValueError(f"task factory {spec!r} returned a {type(task).__name__}, not a LearningTask")
    return task
