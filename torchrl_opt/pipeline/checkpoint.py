"""Checkpoints: written atomically, loaded safely, checked against the run they resume.

* Writing goes to a temporary file in the same directory, is flushed and fsynced, then renamed over
  the old checkpoint (``os.replace`` is atomic on POSIX): a kill mid-write leaves the last good one.
* Loading uses ``torch.load(weights_only=True)``: tensors, numbers, strings and containers only,
  never pickled code.
* Every checkpoint carries a ``fingerprint`` (the configuration entries that must not change across
  a resume: env, dataset, backbone, sizes); a mismatch raises :class:`CheckpointMismatchError` naming
  the differing entries.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "check_fingerprint",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or malformed."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint belongs to a different run configuration."""


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Atomically write ``state`` (plus the format version) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, **state}
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    _fsync_directory(path.parent)
    return path


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
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"Checkpoint {path} has format {state.get('format_version') if isinstance(state, dict) else type(state)!r}; "
            f"expected {FORMAT_VERSION}"
        )
    return state


def check_fingerprint(state: Mapping[str, Any], expected: Mapping[str, Any], path: str | Path) -> None:
    """Raise :class:`CheckpointMismatchError` when ``state['fingerprint']`` differs from ``expected``."""
    found = state.get("fingerprint")
    if found is None:
        raise CheckpointError(f"Checkpoint {path} has no fingerprint")
    expected = json.loads(json.dumps(dict(expected)))
    differences = {
        key: (found.get(key), expected.get(key))
        for key in sorted(set(found) | set(expected))
        if found.get(key) != expected.get(key)
    }
    if differences:
        lines = ", ".join(f"{k}: checkpoint={a!r} run={b!r}" for k, (a, b) in differences.items())
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
