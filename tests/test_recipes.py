"""The Hydra recipes (``recipes/opt.py`` + ``recipes/config``).

Every paper preset composes (Hydra compose API) into a valid ``RunConfig``; its kappa schedule,
backbone, UTD, SPOT lambda, discount and LayerNorm match the paper (expected values hand-copied
from Appendix H Table 15 / Appendix A.1 / SPOT, independent of the library's tables); every
ablation composes with the intended change; bad keys are rejected naming the key; and a tiny real
run of the recipe as a subprocess writes ``summary.json`` (``-k "not subprocess"`` deselects it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ConfigKeyError, ValidationError

from _helpers import load_script
from torchrl_opt.pipeline.config import RunConfig
from torchrl_opt.schedules import KappaSchedule, kappa_preset

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "opt.py"
CONFIG_DIR = REPO / "recipes" / "config"


recipe = load_script("opt_recipe", RECIPE)  # registers the schema and the resolvers

# ---------------------------------------------------------------- expected values (hand-copied)
# Appendix H, Table 15: (kappa_init, T_decay, kappa_end); MuJoCo random "-" = constant 1.0.
TABLE_15 = {
    "random": (1.0, 0, 1.0),
    "medium": (0.3, 150_000, 0.9),
    "medium-replay": (0.1, 150_000, 0.9),
    "umaze": (0.1, 100_000, 0.9),
    "umaze-diverse": (0.1, 100_000, 0.9),
    "medium-play": (0.1, 100_000, 0.9),
    "medium-diverse": (0.1, 100_000, 0.9),
    "large-play": (0.1, 100_000, 0.9),
    "large-diverse": (0.1, 200_000, 0.9),
    "cloned": (0.1, 250_000, 0.9),
}
# SPOT (Wu et al. 2022) AntMaze lambdas.
SPOT_LAMBDA = {
    "umaze": 0.25,
    "umaze-diverse": 0.25,
    "medium-play": 0.05,
    "medium-diverse": 0.025,
    "large-play": 0.025,
    "large-diverse": 0.025,
}
MUJOCO = [(env, ds) for env in ("halfcheetah", "hopper", "walker2d")
          for ds in ("random", "medium", "medium-replay")]
ANTMAZE = [("antmaze", ds) for ds in SPOT_LAMBDA]
ADROIT = [(env, "cloned") for env in ("pen", "hammer", "door", "relocate")]
PAPER_BACKBONE = {**{t: "td3" for t, _ in MUJOCO}, "antmaze": "spot",
                  **{t: "spot" for t, _ in ADROIT}}
PAPER_TASKS = MUJOCO + ANTMAZE + ADROIT
# (env, dataset, backbone): the paper's backbone for each task, and IQL (+OPT) on every task.
COMBOS = [(e, d, PAPER_BACKBONE[e]) for e, d in PAPER_TASKS] + [(e, d, "iql") for e, d in PAPER_TASKS]
ABLATIONS = [p.stem for p in (CONFIG_DIR / "ablation").glob("*.yaml")]


@pytest.fixture(scope="module", autouse=True)
def _hydra():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        yield


def _compose(*overrides: str):
    return compose(config_name="opt", overrides=list(overrides))


def _run_config(*overrides: str) -> RunConfig:
    return recipe.make_run_config(_compose(*overrides))


def _domain(env: str) -> str:
    return "mujoco" if env in ("halfcheetah", "hopper", "walker2d") else (
        "antmaze" if env == "antmaze" else "adroit")


def _check_schedule(schedule: KappaSchedule, init: float, t_decay: int, end: float) -> None:
    """The schedule's values at 0, T/2, T and 2T equal the linear ramp of (init, T, end)."""
    assert schedule.value(0) == pytest.approx(init)
    if t_decay:
        assert schedule.value(t_decay // 2) == pytest.approx(init + 0.5 * (end - init))
    assert schedule.value(t_decay) == pytest.approx(end)
    assert schedule.value(2 * t_decay + 1) == pytest.approx(end)


# ---------------------------------------------------------------- presets
@pytest.mark.parametrize("env,dataset,backbone", COMBOS)
def test_preset_resolves_to_paper_settings(env, dataset, backbone):
    cfg = _run_config(f"env={env}", f"dataset={dataset}", f"backbone={backbone}", "scale=paper")
    assert isinstance(cfg, RunConfig)
    assert (cfg.dataset.task, cfg.dataset.kind, cfg.backbone.name) == (env, dataset, backbone)
    domain = _domain(env)
    assert cfg.dataset.source == ("generated" if domain == "mujoco" else "minari")
    b = cfg.backbone
    # Appendix A.1: LayerNorm in actor and critic on Adroit (env/*.yaml); elsewhere the presets' off
    assert b.actor_layer_norm is b.critic_layer_norm is (domain == "adroit")
    # CORL's configs (hand-copied here, independently of torchrl_opt.presets): SPOT on AntMaze
    # discount 0.99 offline / 0.995 online, lambda per maze cooled to 0.2; on Adroit lambda 1.0 -> 0.5
    assert b.gamma == 0.99
    assert b.online_gamma == (0.995 if (domain, backbone) == ("antmaze", "spot") else 0.99)
    if backbone == "spot":
        lam, lam_end = {"antmaze": (SPOT_LAMBDA.get(dataset), 0.2), "adroit": (1.0, 0.5)}[domain]
        assert (b.spot_lambda, b.spot_lambda_end) == (lam, lam_end)
        assert b.actor_lr == 1e-4
    if backbone == "iql":  # CORL IQL: iql_tau / beta / actor_dropout, normalize: true
        tau, beta, dropout = {"mujoco": (0.7, 3.0, 0.0), "antmaze": (0.9, 10.0, 0.0),
                              "adroit": (0.8, 3.0, 0.1)}[domain]
        assert (b.expectile, b.temperature, b.actor_dropout) == (tau, beta, dropout)
        assert cfg.offline.normalize_observations is True
    else:
        assert cfg.offline.normalize_observations is False
    assert cfg.method == "opt"
    assert cfg.finetune.replay == "balanced"
    assert cfg.online_pretrain.mode == "meta"
    # kappa: the preset is resolved at run time from the single table (nothing copied to YAML)
    assert cfg.finetune.kappa.kind == "preset"
    _check_schedule(kappa_preset(cfg.dataset.task, cfg.dataset.kind, cfg.finetune.kappa.start),
                    *TABLE_15[dataset])
    assert cfg.finetune.utd == (5 if domain == "mujoco" else 1)
    assert cfg.offline.steps == 1_000_000
    assert cfg.online_pretrain.n_tau == 25_000
    assert cfg.online_pretrain.steps == 50_000
    assert cfg.finetune.env_steps == 275_000
    assert (cfg.eval.every, cfg.eval.episodes) == (5_000, 10)
    assert cfg.backbone.hidden == [256, 256]
    assert cfg.offline.batch_size == cfg.finetune.batch_size == 256


@pytest.mark.parametrize("env,dataset", PAPER_TASKS)
def test_env_selects_paper_backbone(env, dataset):
    """Without ``backbone=``, each env picks its paper backbone; the demo scale composes too."""
    cfg = _run_config(f"env={env}", f"dataset={dataset}")
    assert cfg.backbone.name == PAPER_BACKBONE[env]
    assert cfg.backbone.hidden == [64, 64] and cfg.finetune.utd == 1
    assert cfg.backbone.critic_layer_norm is (_domain(env) == "adroit")


def test_default_is_small_complete_demo():
    cfg = _run_config()
    assert (cfg.dataset.task, cfg.dataset.kind, cfg.dataset.source) == ("hopper", "random", "generated")
    assert cfg.backbone.name == "td3" and cfg.method == "opt"
    assert max(cfg.backbone.hidden) <= 64
    # every phase runs, with small budgets
    assert 1_000 <= cfg.offline.steps <= 5_000
    assert 1_000 <= cfg.online_pretrain.n_tau <= 2_000
    assert 100 <= cfg.online_pretrain.steps <= 1_000
    assert 2_000 <= cfg.finetune.env_steps <= 3_000
    assert cfg.eval.episodes <= 5 and cfg.eval.every <= cfg.finetune.env_steps
    assert cfg.dataset.size <= 100_000
    assert cfg.run_dir is None  # filled with Hydra's output dir by the recipe


def test_task_selection_from_cli_example():
    cfg = _run_config("env=walker2d", "dataset=random", "backbone=td3")
    assert (cfg.dataset.task, cfg.dataset.kind, cfg.backbone.name) == ("walker2d", "random", "td3")
    assert cfg.finetune.utd == 1  # demo scale lowers UTD ...
    assert _run_config("env=walker2d", "scale=paper").finetune.utd == 5  # ... the paper keeps 5


def test_make_run_config_uses_output_dir(tmp_path):
    assert recipe.make_run_config(_compose(), str(tmp_path)).run_dir == str(tmp_path)
    explicit = recipe.make_run_config(_compose(f"run_dir={tmp_path / 'x'}"), str(tmp_path))
    assert explicit.run_dir == str(tmp_path / "x")


# ---------------------------------------------------------------- methods and ablations
def test_methods():
    assert _run_config("method=opt").method == "opt"
    assert _run_config("method=vanilla").method == "vanilla"


@pytest.mark.parametrize("method", ["opt", "vanilla", "rlpd", "rlpd_offline", "rlpd_opt", "wsrl", "porl"])
def test_demo_scale_makes_every_method_a_demo(method):
    """``scale=demo`` (the default) shrinks every method's networks, UTD and budgets."""
    cfg = _run_config(f"method={method}")
    assert cfg.backbone.hidden == [64, 64]
    assert max(cfg.finetune.utd, cfg.rlpd.utd, cfg.wsrl.utd, cfg.porl.utd) <= 2
    assert max(cfg.rlpd.start_steps, cfg.wsrl.warmup_steps, cfg.porl.presample_steps) <= 1_000
    assert cfg.porl.bc_steps <= cfg.offline.steps <= 5_000
    assert cfg.finetune.env_steps <= 3_000


def test_every_paper_ablation_has_a_file():
    expected = {"none", "qon_random_init", "qon_bon_only", "qon_joint", "no_qon", "kappa_fixed_0",
                "kappa_fixed_05", "kappa_fixed_1", "kappa_end_08", "kappa_end_07",
                "replay_online", "replay_symmetric", "replay_uniform"}
    assert set(ABLATIONS) == expected


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_ablation_composes(ablation):
    base = _run_config("env=antmaze", "dataset=large-diverse")
    cfg = _run_config("env=antmaze", "dataset=large-diverse", f"ablation={ablation}")
    changes = {
        "none": {},
        "qon_random_init": {"online_pretrain.steps": 0},
        "qon_bon_only": {"online_pretrain.mode": "online"},
        "qon_joint": {"online_pretrain.mode": "joint"},
        "no_qon": {"online_pretrain.critic": "q_off"},
        "kappa_fixed_0": {"finetune.kappa.kind": "constant", "finetune.kappa.init": 0.0,
                          "finetune.kappa.end": 0.0},
        "kappa_fixed_05": {"finetune.kappa.kind": "constant", "finetune.kappa.init": 0.5,
                           "finetune.kappa.end": 0.5},
        "kappa_fixed_1": {"finetune.kappa.kind": "constant", "finetune.kappa.init": 1.0,
                          "finetune.kappa.end": 1.0},
        # T_decay stays Table 15's 200k of large-diverse
        "kappa_end_08": {"finetune.kappa.kind": "linear", "finetune.kappa.init": 0.1,
                         "finetune.kappa.end": 0.8, "finetune.kappa.t_decay": 200_000},
        "kappa_end_07": {"finetune.kappa.kind": "linear", "finetune.kappa.init": 0.1,
                         "finetune.kappa.end": 0.7, "finetune.kappa.t_decay": 200_000},
        "replay_online": {"finetune.replay": "online"},
        "replay_symmetric": {"finetune.replay": "symmetric"},
        "replay_uniform": {"finetune.replay": "uniform"},
    }[ablation]

    def get(c, dotted):
        for part in dotted.split("."):
            c = getattr(c, part)
        return c

    for key, value in changes.items():
        assert get(cfg, key) == value, key
    # nothing else moved
    from dataclasses import asdict

    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    moved = {k for (k, v), (_, w) in zip(flat(asdict(base)), flat(asdict(cfg))) if v != w}
    assert moved == {k for k in changes if get(base, k) != changes[k]}


def test_linear_kappa_ablation_uses_the_task_t_decay():
    cfg = _run_config("env=hopper", "dataset=medium", "ablation=kappa_end_07")
    k = cfg.finetune.kappa
    _check_schedule(KappaSchedule(k.init, k.end, k.t_decay, k.start), 0.1, 150_000, 0.7)


def test_ablations_combine_and_override_on_cli():
    cfg = _run_config("ablation=[qon_joint,replay_online]", "online_pretrain.n_tau=6250",
                      "finetune.kappa.kind=constant", "finetune.kappa.init=0.5",
                      "finetune.kappa.end=0.5", "seed=3")
    assert (cfg.online_pretrain.mode, cfg.finetune.replay) == ("joint", "online")
    assert cfg.online_pretrain.n_tau == 6250 and cfg.seed == 3
    assert (cfg.finetune.kappa.kind, cfg.finetune.kappa.init) == ("constant", 0.5)


def test_offline_checkpoint_override(tmp_path):
    path = tmp_path / "offline.pt"
    path.write_bytes(b"")  # validation checks that the file exists; its content is read at run time
    assert _run_config(f"offline.checkpoint={path}").offline.checkpoint == str(path)


# ---------------------------------------------------------------- rejections
def test_misspelt_key_is_rejected_naming_it():
    with pytest.raises(ConfigCompositionException) as err:
        _compose("finetune.utdd=3")
    assert "utdd" in str(err.value) or "utdd" in str(err.value.__cause__)


def test_wrong_type_is_rejected_naming_the_key():
    with pytest.raises((ConfigCompositionException, ValidationError)) as err:
        _run_config("finetune.utd=many")
    text = str(err.value) + str(err.value.__cause__)
    assert "utd" in text


def test_unknown_preset_is_rejected():
    with pytest.raises(MissingConfigException) as err:
        _compose("env=atari")
    assert "atari" in str(err.value)


@pytest.mark.parametrize("override,key", [("+threads=4", "threads"), ("+finetune.foo=1", "foo")])
def test_added_keys_are_rejected_by_the_schema(override, key):
    """``+key=...`` passes Hydra's composition; converting to RunConfig rejects it."""
    cfg = _compose(override)
    # torchrl_opt's ConfigError (a ValueError) or OmegaConf's ConfigKeyError, naming the key
    with pytest.raises((ValueError, ConfigKeyError), match=key):
        recipe.make_run_config(cfg)


# ---------------------------------------------------------------- resolvers
def test_run_name_resolver():
    assert recipe._run_name("td3", "opt", "demo", "none", "") == "td3-opt-demo"
    assert recipe._run_name("spot", "vanilla", "paper", ["qon_joint", "replay_online"],
                            "online_pretrain.n_tau_6250+dataset.path_d/x.hdf5") == (
        "spot-vanilla-paper-qon_joint+replay_online-online_pretrain.n_tau_6250+dataset.path_d_x.hdf5")


def test_kappa_resolver_reads_table_15():
    assert recipe._kappa_field("antmaze", "large-diverse", "T_decay") == 200_000
    assert recipe._kappa_field("pen", "cloned", "kappa_init") == pytest.approx(0.1)
    with pytest.raises(KeyError, match="unknown field"):
        recipe._kappa_field("pen", "cloned", "t_decay")


# ---------------------------------------------------------------- a real (tiny) run
TINY = [
    "dataset.size=2000", "offline.steps=40", "offline.eval_every=40", "online_pretrain.n_tau=150",
    "online_pretrain.steps=10", "finetune.env_steps=120", "eval.every=60", "eval.episodes=1",
    "eval.max_steps=100", "logging.log_every=20", "logging.progress=false", "checkpoint.every=0",
]


def _recipe(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MINARI_DATASETS_PATH": str(tmp_path / "minari"), "RL_WARNINGS": "False",
           "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    return subprocess.run(
        [sys.executable, str(RECIPE), *TINY, *overrides], cwd=tmp_path, env=env, check=False,
        capture_output=True, text=True, timeout=300,
    )


@pytest.mark.timeout(300)
def test_recipe_subprocess_run_writes_summary_and_its_offline_pt_serves_a_baseline(tmp_path):
    """``python recipes/opt.py`` from another directory: a complete tiny OPT run.

    Then the baseline from the run's offline.pt. (Rerunning a finished run: test_launchers.)
    """
    proc = _recipe(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Hydra's override_dirname: sorted overrides, logging.*/checkpoint.* excluded by opt.yaml,
    # joined by "+" with "=" -> "_" (opt.yaml's item_sep / kv_sep); a long one ends in a digest
    overrides = "+".join(sorted(o for o in TINY if not o.startswith("logging.")
                                and not o.startswith("checkpoint."))).replace("=", "_")
    assert len(overrides) > recipe.MAX_NAME_PART  # exercises the bounded directory name
    run_dir = tmp_path / "runs" / "hopper-random" / recipe._run_name(
        "td3", "opt", "demo", None, overrides) / "seed0"
    assert len(run_dir.parent.name) < 255
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["run_dir"] == str(run_dir)
    assert summary["method"] == "opt"
    assert summary["updates"]["offline"] == 40 and summary["updates"]["pretrain"] == 10
    assert summary["final_normalized_score"] is not None
    assert (run_dir / ".hydra" / "config.yaml").exists()
    assert f"final normalised score:   {summary['final_normalized_score']:.1f}" in proc.stdout
    assert not (tmp_path / "outputs").exists()
    # every finished run writes its own small report and prints where
    report = run_dir / "report" / "report.md"
    assert report.is_file() and f"report: {report}" in proc.stdout
    assert (run_dir / "report" / "score.png").is_file() and "value bias on online states" in proc.stdout

    # the baseline reuses the finished offline phase instead of training it again
    reuse = _recipe(tmp_path, "method=vanilla", f"offline.checkpoint={run_dir / 'offline.pt'}")
    assert reuse.returncode == 0, reuse.stderr[-3000:]
    baseline_dir = run_dir.parent.parent / recipe._run_name(
        "td3", "vanilla", "demo", None, overrides) / "seed0"
    baseline = json.loads((baseline_dir / "summary.json").read_text())
    assert baseline["method"] == "vanilla"
    assert "offline" not in baseline["updates"] and "pretrain" not in baseline["updates"]
    assert baseline["updates"]["finetune"] == 120


@pytest.mark.parametrize("method", ["rlpd", "rlpd_offline", "rlpd_opt", "wsrl", "porl"])
def test_peer_methods_select_the_sac_backbone(method):
    """``method=<peer>`` selects its plan and the SAC-ensemble backbone, even over an env's."""
    cfg = _run_config(f"method={method}", "scale=paper", "env=walker2d", "dataset=random")
    assert cfg.method == method and cfg.backbone.name == "sac"
    assert cfg.backbone.hidden == [256, 256]
    assert (cfg.rlpd.utd, cfg.wsrl.utd, cfg.porl.utd) == (20, 4, 16)
    assert cfg.wsrl.warmup_steps == 5000
    assert _run_config(f"method={method}", "env=antmaze", "dataset=umaze").backbone.name == "sac"


@pytest.mark.parametrize("env,dataset,regularizer,steps,alpha,lagrange,failure,max_backup", [
    # zhouzypaul/wsrl experiments/scripts: locomotion CQL 250k (alpha 5); AntMaze Cal-QL 1M with
    # the Lagrange multiplier (gap 0.8), sparse-reward failure rule, max-target backup; Adroit
    # Cal-QL 20k, alpha 1
    ("walker2d", "medium", "cql", 250_000, 5.0, False, None, False),
    ("antmaze", "large-diverse", "calql", 1_000_000, 5.0, True, 0.0, True),
    ("pen", "cloned", "calql", 20_000, 1.0, False, None, False),
])
def test_wsrl_runs_as_its_authors_ran_it(env, dataset, regularizer, steps, alpha, lagrange, failure, max_backup):
    cfg = _run_config("method=wsrl", f"env={env}", f"dataset={dataset}", "scale=paper")
    w, b = cfg.wsrl, cfg.backbone
    assert (w.offline_regularizer, cfg.offline.steps, w.cql_alpha, w.cql_lagrange) == (regularizer, steps, alpha, lagrange)
    assert (w.failure_reward, b.max_target_backup, w.cql_target_action_gap) == (failure, max_backup, 0.8)
    # WSRL's agent (wsrl_config.py / sac_config.py / sac.py): LayerNorm actor and critic, 10 critics,
    # lrs 1e-4 / 3e-4 / 1e-4, min over critics for the actor, no backup entropy, -|A|, pairs drawn
    # with replacement; 20 evaluation episodes
    assert b.actor_layer_norm is b.critic_layer_norm is True and b.num_qvalue_nets == 10
    assert (b.actor_lr, b.critic_lr, b.alpha_lr) == (1e-4, 3e-4, 1e-4)
    assert (b.actor_q_reduction, b.backup_entropy, b.target_entropy_per_dim, b.subset_replacement) == (
        "min", False, 1.0, True)
    assert cfg.eval.episodes == 20
    # an explicit value wins over the preset
    assert _run_config("method=wsrl", f"env={env}", f"dataset={dataset}", "offline.steps=7").offline.steps == 7


def test_rlpd_runs_as_its_authors_ran_it():
    """ikostrikov/rlpd: 10 LayerNorm critics (actor without), ensemble mean for the actor,
    entropy in the backup, target entropy -|A|/2, critic pairs without replacement, 10 episodes."""
    b = _run_config("method=rlpd", "env=hopper", "dataset=medium", "scale=paper").backbone
    assert (b.critic_layer_norm, b.actor_layer_norm, b.num_qvalue_nets) == (True, False, 10)
    assert (b.actor_q_reduction, b.backup_entropy, b.target_entropy_per_dim, b.subset_replacement) == (
        "mean", True, 0.5, False)
    assert (b.actor_lr, b.critic_lr, b.alpha_lr) == (3e-4, 3e-4, 3e-4)


def test_antmaze_presets_shift_rewards():
    cfg = _run_config("env=antmaze", "dataset=umaze")
    assert cfg.dataset.reward_shift == -1.0
    assert _run_config("env=hopper", "dataset=random").dataset.reward_shift == 0.0


# ---------------------------------------------------------------- seed-batched runs
def test_seeds_compose_and_name_their_directory():
    cfg = _run_config("seeds=[0,1,2]")
    assert cfg.seeds == [0, 1, 2]
    assert _run_config().seeds is None
    assert recipe._seed_dir(4, None) == "seed4"
    assert recipe._seed_dir(0, [0, 1, 2]) == "seeds0-1-2"
    long = recipe._seed_dir(0, list(range(40)))
    assert long.startswith("seeds40x-h") and len(long) < 40


def test_format_summary_of_a_seed_group():
    summary = {
        "method": "opt",
        "config": {"dataset": {"task": "hopper", "kind": "random"}, "backbone": {"name": "td3"}},
        "seeds": [0, 1], "env_id": "Hopper-v5", "device": "cpu",
        "per_seed": {"0": {"final_normalized_score": 10.0}, "1": {"final_normalized_score": 20.0}},
        "final_normalized_score": 15.0, "final_normalized_score_std": 5.0,
        "wall_clock_s": {"offline": 1.0},
    }
    text = recipe.format_summary(summary, "/tmp/x")
    assert "seeds=[0, 1]" in text
    assert "final normalised score:   15.0 +- 5.0 (seeds 0: 10.0, 1: 20.0)" in text


@pytest.mark.timeout(300)
def test_recipe_subprocess_seed_group(tmp_path):
    """``python recipes/opt.py seeds=[0,1]``: both seeds in one process, one directory."""
    proc = _recipe(tmp_path, "seeds=[0,1]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (summary_path,) = (tmp_path / "runs").rglob("seeds0-1/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["seeds"] == [0, 1]
    for seed in (0, 1):
        seed_summary = json.loads((summary_path.parent / f"seed{seed}" / "summary.json").read_text())
        assert seed_summary["config"]["seed"] == seed
    assert f"final normalised score:   {summary['final_normalized_score']:.1f} +-" in proc.stdout
    assert (summary_path.parent / "report" / "report.md").is_file()
