"""docs/own-loop.md runs: its python blocks, in order, in one namespace.

The fast test runs every block except the one that calls ``torch.compile`` (tens of seconds of
compilation on a CPU); the ``compile``-marked test runs the whole page.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

PAGE = Path(__file__).resolve().parents[1] / "docs" / "own-loop.md"


def python_blocks(path: Path) -> list[str]:
    """The fenced ```python blocks of a Markdown page, in order."""
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def _run_page(monkeypatch, *, compile_blocks: bool) -> dict:
    # the page points the Minari root at a temporary directory; restore the caller's afterwards
    monkeypatch.setenv("MINARI_DATASETS_PATH", os.environ.get("MINARI_DATASETS_PATH", ""))
    namespace: dict = {"__name__": "own_loop"}
    ran = 0
    for i, block in enumerate(python_blocks(PAGE)):
        if "torch.compile(" in block and not compile_blocks:
            continue
        try:
            exec(compile(block, f"{PAGE.name}[block {i}]", "exec"), namespace)
        except Exception as err:  # name the block that failed
            pytest.fail(f"block {i} of {PAGE.name} raised {type(err).__name__}: {err}")
        ran += 1
    namespace["_blocks_run"] = ran
    return namespace


def _check_outcome(namespace: dict) -> None:
    loss, replay, kappa = namespace["loss"], namespace["replay"], namespace["kappa"]
    # the walkthrough fine-tuned both critics under the schedule and the balanced replay
    assert loss.has_qvalue_on and loss.kappa.item() == pytest.approx(kappa.current)
    assert replay.num_online == namespace["b_on"].shape[0] + 60
    assert 0.0 < replay.online_share().item() < 1.0
    out = namespace["out"]
    assert all(torch.isfinite(out[k]) for k in loss.qvalue_loss_keys)
    assert not Path(os.environ["MINARI_DATASETS_PATH"]).exists()  # the page cleaned up


def test_page_has_the_walkthrough_blocks():
    blocks = python_blocks(PAGE)
    text = "\n".join(blocks)
    for name in ("Collector", "MetaAdaptationLoss", "opt_loss_from_offline", "KappaSchedule",
                 'make_replay("balanced"', "sample_offline_online", "loss_and_priorities",
                 "update_priority", "SoftUpdate", "torch.compile"):
        assert name in text, name
    assert sum("torch.compile(" in b for b in blocks) == 1  # the one block the fast test skips


def test_own_loop_page_runs(monkeypatch):
    namespace = _run_page(monkeypatch, compile_blocks=False)
    assert namespace["_blocks_run"] == len(python_blocks(PAGE)) - 1
    _check_outcome(namespace)


@pytest.mark.compile
def test_own_loop_page_runs_with_compiled_steps(monkeypatch):
    torch._dynamo.reset()
    namespace = _run_page(monkeypatch, compile_blocks=True)
    assert namespace["_blocks_run"] == len(python_blocks(PAGE))
    _check_outcome(namespace)
