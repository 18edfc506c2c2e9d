import numpy as np
import pytest
import torch

from torchrl_opt.data.scores import (
    D4RL_REF_SCORES,
    UnknownTaskError,
    dataset_reference_scores,
    normalized_score,
    reference_scores,
    task_from_name,
)


def test_table_matches_d4rl_infos():
    # d4rl/infos.py REF_MIN_SCORE / REF_MAX_SCORE, typed in by hand
    expected = {
        "halfcheetah": (-280.178953, 12135.0),
        "hopper": (-20.272305, 3234.3),
        "walker2d": (1.629008, 4592.3),
        "ant": (-325.6, 3879.7),
        "antmaze": (0.0, 1.0),
        "pen": (96.262799, 3076.8331017826877),
        "hammer": (-274.856578, 12794.134825156867),
        "door": (-56.512833, 2880.5693087298737),
        "relocate": (-6.425911, 4233.877797728884),
    }
    assert dict(D4RL_REF_SCORES) == expected


@pytest.mark.parametrize(
    "task, ret, expected",
    [
        # 100 * (R - min) / (max - min), worked out by hand
        ("walker2d", 1.629008, 0.0),
        ("walker2d", 4592.3, 100.0),
        ("hopper", 1607.0138475, 50.0),  # -20.272305 + 0.5 * (3234.3 + 20.272305)
        ("halfcheetah", 4770.0, 40.68),  # (4770 + 280.178953) / 12415.178953 = 0.40678...
        ("antmaze", 0.75, 75.0),
        ("pen", 96.262799 + 0.25 * (3076.8331017826877 - 96.262799), 25.0),
        ("ant", -325.6, 0.0),
    ],
)
def test_normalized_score_hand_values(task, ret, expected):
    assert normalized_score(task, ret) == pytest.approx(expected, abs=5e-3)


def test_normalized_score_halfcheetah_exact():
    value = normalized_score("halfcheetah-medium-v2", 4770.0)
    assert value == pytest.approx(100 * (4770.0 + 280.178953) / (12135.0 + 280.178953), rel=1e-12)


def test_normalized_score_array_and_tensor_keep_type():
    arr = np.array([1.629008, 4592.3])
    out = normalized_score("walker2d", arr)
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, [0.0, 100.0], atol=1e-9)
    t = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)
    out_t = normalized_score("antmaze", t)
    assert isinstance(out_t, torch.Tensor)
    torch.testing.assert_close(out_t, torch.tensor([0.0, 100.0, 50.0], dtype=torch.float64))


def test_ref_override_uses_dataset_scores():
    meta = {"ref_min_score": 10.0, "ref_max_score": 30.0}
    ref = dataset_reference_scores(meta)
    assert ref == (10.0, 30.0)
    assert normalized_score(None, 25.0, ref=ref) == pytest.approx(75.0)
    assert dataset_reference_scores({"ref_min_score": 1.0}) is None


@pytest.mark.parametrize(
    "name, task",
    [
        ("walker2d", "walker2d"),
        ("walker2d-medium-replay-v2", "walker2d"),
        ("antmaze-large-diverse-v2", "antmaze"),
        ("D4RL/antmaze/umaze-v1", "antmaze"),
        ("D4RL/pen/cloned-v2", "pen"),
        ("torchrl-opt/hopper/random-v0", "hopper"),
        ("mujoco/halfcheetah/expert-v0", "halfcheetah"),
    ],
)
def test_task_from_name(name, task):
    assert task_from_name(name) == task
    assert reference_scores(name) == D4RL_REF_SCORES[task]


def test_unknown_task_raises():
    with pytest.raises(UnknownTaskError, match="cartpole"):
        normalized_score("cartpole", 1.0)
    with pytest.raises(ValueError, match="Degenerate"):
        normalized_score(None, 1.0, ref=(2.0, 2.0))
    with pytest.raises(ValueError, match="task or explicit ref"):
        normalized_score(None, 1.0)
