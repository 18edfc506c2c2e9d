"""OPTTrainer: phases, equality with the recipe pipeline, Hydra instantiation, checkpoints."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from torchrl_opt.data.replay import make_replay
from torchrl_opt.models import make_qvalue_ensemble, make_td3_actor
from torchrl_opt.objectives.td3_opt import OPTLoss
from torchrl_opt.pipeline.config import (
    BackboneConfig,
    CheckpointConfig,
    DatasetConfig,
    EvalConfig,
    FinetuneConfig,
    KappaConfig,
    LoggingConfig,
    OfflineConfig,
    OnlinePretrainConfig,
    RunConfig,
)
from torchrl_opt.pipeline.config import AccelerationConfig
from torchrl_opt.trainers import OPTTrainer, TrainerConfigError, make_update_specs
from torchrl_opt.trainers.configs import OPTTrainerConfig

from _helpers import action_spec, transition_batch

ENV_STEPS, UTD, N_TAU, KAPPA_INIT, KAPPA_END, T_DECAY = 24, 2, 40, 0.1, 0.9, 16


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("opt_trainer")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root / "minari")
    yield root
    if old is None:
        os.environ.pop("MINARI_DATASETS_PATH", None)
    else:
        os.environ["MINARI_DATASETS_PATH"] = old


def tiny_config(run_dir: Path, checkpoint: str | None = None, seed: int = 0) -> RunConfig:
    return RunConfig(
        seed=seed,
        device="cpu",
        dataset=DatasetConfig(task="hopper", kind="random", size=400),
        backbone=BackboneConfig(hidden=[16, 16]),
        offline=OfflineConfig(steps=20, batch_size=32, eval_every=0, checkpoint=checkpoint),
        online_pretrain=OnlinePretrainConfig(n_tau=N_TAU, steps=8, batch_size=16),
        finetune=FinetuneConfig(
            env_steps=ENV_STEPS, utd=UTD, batch_size=16,
            kappa=KappaConfig(kind="linear", init=KAPPA_INIT, end=KAPPA_END, t_decay=T_DECAY),
        ),
        eval=EvalConfig(every=12, episodes=1, max_steps=25),
        logging=LoggingConfig(backend="none", progress=False, log_every=8, report=False),
        checkpoint=CheckpointConfig(every=0),
        run_dir=str(run_dir),
    )


@pytest.fixture(scope="session")
def offline_checkpoint(workdir) -> str:
    """A pipeline offline phase (20 TD3+BC steps) on a generated 400-transition dataset."""
    from torchrl_opt.pipeline.run import run

    torch.set_num_threads(1)
    result = run(tiny_config(workdir / "offline_run"))
    path = result.run_dir / "offline.pt"
    assert path.exists()
    return str(path)


def _params(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_phases_pretrain_touches_only_q_on_then_finetune(workdir, offline_checkpoint):
    trainer = OPTTrainer.from_run_config(
        tiny_config(workdir / "phases", offline_checkpoint), progress_bar=False
    )
    loss = trainer.loss_module
    before = _params(loss)
    trainer.pretrain()
    after = _params(loss)
    online = [k for k in before if k.startswith(("qvalue_on", "target_qvalue_on"))]
    frozen = [k for k in before if k not in online and k != "kappa"]
    assert online and frozen
    assert all(torch.equal(before[k], after[k]) for k in frozen), "pre-training moved a frozen entry"
    assert any(not torch.equal(before[k], after[k]) for k in online if k.startswith("qvalue_on"))
    assert trainer.run.online_data.shape == (N_TAU,)
    assert trainer.pretrained

    trainer.start_finetuning()  # the run object's fine-tuning pieces: B_on in the replay
    assert trainer.replay_buffer.num_online == N_TAU
    priorities0 = trainer.replay_buffer._sampler.priorities.clone()
    trainer.train()  # pre-training is not repeated
    assert trainer.collected_frames == ENV_STEPS
    assert trainer.update_count == ENV_STEPS * UTD == trainer._optim_count
    # kappa(t) = kappa_init + min(t, T) / T * (kappa_end - kappa_init), stepped once per env step
    assert trainer.kappa.step_count == ENV_STEPS
    expected = KAPPA_INIT + min(ENV_STEPS, T_DECAY) / T_DECAY * (KAPPA_END - KAPPA_INIT)
    assert float(loss.kappa) == pytest.approx(expected, abs=1e-6)
    assert trainer.replay_buffer.num_online == N_TAU + ENV_STEPS
    # balanced replay: density-ratio priorities replaced the initial ones of sampled rows
    priorities = trainer.replay_buffer._sampler.priorities
    offline = trainer.replay_buffer.offline_size
    assert torch.equal(priorities0[:offline], torch.ones(offline))
    assert (priorities[:offline] != 1).sum() > 0
    assert bool((priorities[: len(trainer.replay_buffer)] >= 1e-3).all())
    assert [f for f, _ in trainer.evaluation.history] == [12, 24]
    # fine-tuning moved the actor and both critics
    final = _params(loss)
    for prefix in ("actor_network_params", "qvalue_off_network_params", "qvalue_on_network_params"):
        keys = [k for k in final if k.startswith(prefix)]
        assert keys and any(not torch.equal(after[k], final[k]) for k in keys)


def test_equal_to_recipe_pipeline(workdir, offline_checkpoint):
    from torchrl_opt.pipeline.run import run

    result = run(tiny_config(workdir / "pipeline_eq", offline_checkpoint))
    trainer = OPTTrainer.from_run_config(
        tiny_config(workdir / "trainer_eq", offline_checkpoint), progress_bar=False
    )
    trainer.train()
    expected = result.agent.finetune_loss.state_dict()
    got = trainer.loss_module.state_dict()
    assert expected.keys() == got.keys()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, f"trainer and pipeline differ in {different}"
    pipeline_eval = result.history["eval/return"]
    trainer_eval = [(f, r["return"]) for f, r in trainer.evaluation.history]
    assert trainer_eval == pipeline_eval
    assert result.summary["updates"]["finetune"] == trainer.update_count


def _hydra_cfg(workdir: Path, checkpoint: str, name: str):
    run_dir = workdir / name
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = OmegaConf.create({"trainer": OmegaConf.structured(OPTTrainerConfig)})
    overrides = [
        "trainer.device=cpu", "trainer.dataset.size=400", "trainer.backbone.hidden=[16,16]",
        f"trainer.offline.checkpoint={checkpoint}",
        "trainer.online_pretrain.n_tau=20", "trainer.online_pretrain.steps=4",
        "trainer.online_pretrain.batch_size=8", "trainer.finetune.env_steps=10", "trainer.finetune.utd=1",
        "trainer.finetune.batch_size=8", "trainer.finetune.kappa.kind=linear",
        "trainer.finetune.kappa.init=0.2", "trainer.finetune.kappa.end=0.6",
        "trainer.finetune.kappa.t_decay=10", "trainer.eval.every=0", "trainer.eval.episodes=1",
        "trainer.eval.max_steps=20", f"trainer.run_dir={run_dir}", "trainer.progress_bar=false",
        "trainer.log_interval=0", f"trainer.save_trainer_file={run_dir / 'trainer.pt'}",
        "trainer.logger={_target_: torchrl.record.loggers.csv.CSVLogger, exp_name: opt, "
        f"log_dir: {run_dir / 'logs'}}}",
    ]
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides)), run_dir


def test_hydra_config_instantiates_runs_and_checkpoints(workdir, offline_checkpoint):
    from hydra.utils import instantiate

    cfg, run_dir = _hydra_cfg(workdir, offline_checkpoint, "hydra")
    trainer = instantiate(cfg.trainer)
    assert isinstance(trainer, OPTTrainer)
    trainer.train()
    assert trainer.collected_frames == 10 and trainer.update_count == 10
    assert float(trainer.loss_module.kappa) == pytest.approx(0.6, abs=1e-6)
    scalars = run_dir / "logs" / "opt" / "scalars"
    assert (scalars / "eval" / "normalized_score.csv").exists()  # TorchRL logger got the eval hook
    assert (scalars / "loss_qvalue_on.csv").exists()  # and the stepper's averaged losses
    assert (scalars / "pretrain" / "loss_pretrain.csv").exists()  # and online pre-training
    ckpt = run_dir / "trainer.pt"
    assert ckpt.exists()

    # TorchRL's checkpoint hook restores loss, optimisers, kappa, replay and phase flags
    fresh_cfg, _ = _hydra_cfg(workdir, offline_checkpoint, "hydra_restore")
    fresh = instantiate(fresh_cfg.trainer)
    fresh.load_from_file(ckpt)
    for k, v in trainer.loss_module.state_dict().items():
        assert torch.equal(v, fresh.loss_module.state_dict()[k]), k
    assert fresh.kappa.step_count == 10 and float(fresh.loss_module.kappa) == pytest.approx(0.6, abs=1e-6)
    assert fresh.update_count == 10 and fresh.collected_frames == 10
    assert fresh.pretrained
    assert len(fresh.replay_buffer) == len(trainer.replay_buffer)
    assert torch.equal(fresh.replay_buffer._sampler.priorities, trainer.replay_buffer._sampler.priorities)
    for a, b in zip(trainer.optimization_stepper.updates, fresh.optimization_stepper.updates):
        sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
        assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)


def _tiny_loss() -> OPTLoss:
    spec = action_spec()
    actor = make_td3_actor(4, spec, (8,))
    q_off = make_qvalue_ensemble(4, 2, 2, (8,))
    q_on = make_qvalue_ensemble(4, 2, 2, (8,))
    loss = OPTLoss(actor, q_off, q_on, action_spec=spec, kappa=0.5)
    loss.make_value_estimator(gamma=0.99)
    return loss


def test_make_update_specs_follow_the_agent_and_acceleration():
    loss = _tiny_loss()
    specs = make_update_specs(loss, BackboneConfig(actor_delay=3), "cpu")
    assert [(s.name, s.every) for s in specs] == [("critic", 1), ("actor", 3)]
    critic_params = {id(p) for g in specs[0].optimizer.param_groups for p in g["params"]}
    actor_params = {id(p) for g in specs[1].optimizer.param_groups for p in g["params"]}
    assert not critic_params & actor_params
    actor_leaves = [p for p in loss.actor_network_params.values(True, True)
                    if isinstance(p, torch.nn.Parameter)]
    assert len(actor_params) == len(actor_leaves) == 4  # two Linear layers, weight + bias

    def flat(params):
        return torch.cat([v.detach().flatten() for v in params.values(True, True)])

    # the critic step moves both critics and leaves the actor alone
    batch = transition_batch(16)
    q_on, q_off, actor = (flat(loss.qvalue_on_network_params), flat(loss.qvalue_off_network_params),
                          flat(loss.actor_network_params))
    out = specs[0].step(batch)
    assert {"loss_qvalue_on", "loss_qvalue"} <= set(out.keys())
    assert not torch.equal(q_on, flat(loss.qvalue_on_network_params))
    assert not torch.equal(q_off, flat(loss.qvalue_off_network_params))
    assert torch.equal(actor, flat(loss.actor_network_params))
    compiled = make_update_specs(_tiny_loss(), None, "cpu", AccelerationConfig(compile=True))
    assert all(hasattr(s.step, "_torchdynamo_orig_callable") for s in compiled)
    with pytest.raises(ValueError, match="cudagraphs"):
        make_update_specs(_tiny_loss(), None, "cpu", AccelerationConfig(cudagraphs=True))


def test_bad_arguments_raise_specific_errors():
    loss = _tiny_loss()
    offline = transition_batch(32)
    uniform = make_replay("uniform", offline, 8, 4, seed=0)
    balanced = make_replay("balanced", offline, 8, 4, seed=0)
    with pytest.raises(TrainerConfigError, match="balanced replay needs"):
        OPTTrainer(collector=lambda: None, total_frames=4, loss_module=loss, replay_buffer=balanced)
    with pytest.raises(TrainerConfigError, match="balanced replay needs"):
        OPTTrainer(collector=lambda: None, total_frames=4, loss_module=loss, replay_buffer=uniform,
                   density=lambda: None)
    with pytest.raises(TrainerConfigError, match="MixedReplayBuffer"):
        OPTTrainer(collector=lambda: None, total_frames=4, loss_module=loss, replay_buffer=[])
    with pytest.raises(TrainerConfigError, match="collector must be"):
        OPTTrainer(collector=3, total_frames=4, loss_module=loss, replay_buffer=uniform)
    trainer = OPTTrainer(collector=lambda: "not a collector", total_frames=4, loss_module=loss,
                         replay_buffer=uniform, progress_bar=False)
    with pytest.raises(TrainerConfigError, match="collector factory returned str"):
        trainer.start_finetuning()
    from torchrl_opt.trainers.configs import _make_opt_trainer

    with pytest.raises(TrainerConfigError, match=r"unknown OPTTrainerConfig keys: \['utd'\]"):
        _make_opt_trainer(utd=3)
