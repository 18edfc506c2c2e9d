"""Checkpoints: written atomically, loaded safely, checked against the run they resume.

* Writing goes to a temporary file in the same directory, is flushed and fsynced, then renamed over
  the old checkpoint (``os.replace`` is atomic on POSIX): a kill mid-write leaves the last good one.
* Loading uses ``torch.load(weights_only=True)``: tensors, numbers, strings and containers only,
  never pickled code.
* Every checkpoint carries the format version (:data:`FORMAT_VERSION`); one of another version is
  refused, naming both versions. A run's checkpoint also carries a ``fingerprint`` (method, seeds,
  env, dataset, backbone, budgets, update engine: what must not change across a resume); a mismatch
  raises :class:`CheckpointMismatchError` naming the differing entries. Nothing is written before a
  checkpoint has loaded and matched.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "FORMAT_VERSION",
    "check_fingerprint",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "write_json_atomic",
]

#: version of the checkpoint layout; 2: one layout for every method and seed group (``members``).
FORMAT_VERSION = 2


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or malformed."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint belongs to a different run configuration."""


def _write_atomic(path: Path, mode: str, write: Callable[[Any], None]) -> Path:
    """``write(handle)`` into a temporary file beside ``path``, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    _fsync_directory(path.parent)
    return path


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Atomically write ``state`` (plus the format version) to ``path``."""
    payload = {"format_version": FORMAT_VERSION, **state}
    return _write_atomic(Path(path), "wb", lambda handle: torch.save(payload, handle))


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    """Atomically write ``payload`` as indented JSON to ``path``."""
    return _write_atomic(
        Path(path), "w", lambda handle: json.dump(payload, handle, indent=2, default=str)
    )


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device | None = None) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated/corrupt files
        raise CheckpointError(
            f"Checkpoint {path} is corrupt or not a torchrl-opt checkpoint: {err}"
        ) from err
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"Checkpoint {path} is not a torchrl-opt checkpoint (no format version)")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointMismatchError(
            f"Checkpoint {path} has format version {state['format_version']!r}, this library "
            f"reads and writes version {FORMAT_VERSION}"
        )
    return state


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and scalars are leaves)."""
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def check_fingerprint(state: Mapping[str, Any], expected: Mapping[str, Any], path: str | Path) -> None:
    """Raise :class:`CheckpointMismatchError` when ``state['fingerprint']`` differs from
    ``expected``, naming every differing entry by its dotted key (``finetune.utd``)."""
    found = state.get("fingerprint")
    if found is None:
        raise CheckpointError(f"Checkpoint {path} has no fingerprint")
    found = _flatten(found)
    expected = _flatten(json.loads(json.dumps(dict(expected))))
    missing = object()
    differences = {
        key: (found.get(key, missing), expected.get(key, missing))
        for key in sorted(set(found) | set(expected))
        if found.get(key, missing) != expected.get(key, missing)
    }
    if differences:
        def show(value: Any) -> str:
            return "(absent)" if value is missing else repr(value)

        lines = ", ".join(f"{k}: checkpoint={show(a)} run={show(b)}" for k, (a, b) in differences.items())
        raise CheckpointMismatchError(f"Checkpoint {path} belongs to another configuration ({lines})")


def rng_state(*generators: torch.Generator) -> dict[str, Any]:
    """Global torch RNG states (CPU and CUDA) and those of ``generators``."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    state["generators"] = [g.get_state() for g in generators]
    return state


def set_rng_state(state: Mapping[str, Any], *generators: torch.Generator) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state["generators"]
    if len(saved) != len(generators):
        raise CheckpointError(f"Checkpoint holds {len(saved)} generator states, run has {len(generators)}")
    for generator, generator_state in zip(generators, saved):
        generator.set_state(generator_state)
