"""Unit tests of ``torchrl_opt.pipeline.checkpoint``: atomic writes, safe loading, fingerprints and
RNG state (the run-level behaviour is in ``test_pipeline.py``)."""

from __future__ import annotations

import os
from collections import OrderedDict

import pytest
import torch

from torchrl_opt.pipeline.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointMismatchError,
    check_fingerprint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


class NotATensor:
    """A picklable object that ``weights_only=True`` must refuse to rebuild."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


def _state() -> dict:
    return {
        "phase": "offline",
        "step": 7,
        "agent": {"w": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([True, False])},
        "history": {"eval/return": [(5, 1.5), (10, 2.5)]},
        "nested": OrderedDict(a=torch.zeros(2, dtype=torch.int64)),
    }


def test_roundtrip(tmp_path):
    path = save_checkpoint(tmp_path / "sub" / "checkpoint.pt", _state())
    assert path == tmp_path / "sub" / "checkpoint.pt"
    loaded = load_checkpoint(path)
    assert loaded["format_version"] == FORMAT_VERSION
    assert (loaded["phase"], loaded["step"]) == ("offline", 7)
    assert torch.equal(loaded["agent"]["w"], torch.arange(6.0).reshape(2, 3))
    assert torch.equal(loaded["agent"]["b"], torch.tensor([True, False]))
    assert [tuple(x) for x in loaded["history"]["eval/return"]] == [(5, 1.5), (10, 2.5)]
    assert torch.equal(loaded["nested"]["a"], torch.zeros(2, dtype=torch.int64))
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no temporary left


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "checkpoint.pt", _state())
    good = path.read_bytes()

    def dying_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a zip")  # partial write, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 8})
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 7


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_file_is_a_checkpoint_error(damage, tmp_path):
    path = save_checkpoint(tmp_path / "checkpoint.pt", _state())
    raw = path.read_bytes()
    data = {"truncated": raw[: len(raw) // 3], "garbage": os.urandom(2048), "empty": b""}[damage]
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    assert path.read_bytes() == data  # loading never modifies the file


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format_version": FORMAT_VERSION, "obj": NotATensor()}, path)
    with pytest.raises(CheckpointError, match="corrupt or not a torchrl-opt checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("payload", [{"format_version": FORMAT_VERSION + 1}, {"step": 1}, [1, 2]])
def test_foreign_format_is_refused(payload, tmp_path):
    path = tmp_path / "other.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="No checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")


def test_fingerprint_check(tmp_path):
    expected = {"seed": 0, "env_id": "Hopper-v5", "backbone": {"name": "td3", "hidden": (32, 32)}}
    path = save_checkpoint(
        tmp_path / "c.pt",
        {"fingerprint": {"seed": 0, "env_id": "Hopper-v5", "backbone": {"name": "td3", "hidden": [32, 32]}}},
    )
    state = load_checkpoint(path)
    check_fingerprint(state, expected, path)  # tuples and lists compare equal (JSON form)

    other = {**expected, "seed": 3, "env_id": "Walker2d-v5"}
    with pytest.raises(CheckpointMismatchError) as info:
        check_fingerprint(state, other, path)
    message = str(info.value)
    assert "seed: checkpoint=0 run=3" in message
    assert "env_id: checkpoint='Hopper-v5' run='Walker2d-v5'" in message
    assert "backbone" not in message
    with pytest.raises(CheckpointError, match="no fingerprint"):
        check_fingerprint({}, expected, path)


def test_rng_state_roundtrip(tmp_path):
    generator = torch.Generator().manual_seed(5)
    torch.manual_seed(11)
    path = save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state(generator)})
    first = (torch.rand(4), torch.rand(4, generator=generator))
    set_rng_state(load_checkpoint(path)["rng"], generator)
    second = (torch.rand(4), torch.rand(4, generator=generator))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    with pytest.raises(CheckpointError, match="generator states"):
        set_rng_state(load_checkpoint(path)["rng"], generator, torch.Generator())
