"""Shared fixtures. Eight simulated CPU devices, so sharding tests see a real mesh."""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("MUJOCO_GL", "egl")

import pytest

from tests import rlds_fixtures

TINY_TASKS = ("reach-v3", "button-press-topdown-v3")
TINY_EPISODES = 2
TINY_MAX_FRAMES = 20


@pytest.fixture(scope="session")
def metaworld_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny Meta-World dataset (2 tasks x 2 episodes + 1 val), built once per session."""
    out = str(tmp_path_factory.mktemp("metaworld") / "ds")
    rlds_fixtures.run_module_or_code(
        module_args=[
            "data_pipelines.metaworld_rlds",
            "--out",
            out,
            "--tasks",
            ",".join(TINY_TASKS),
            "--episodes_per_task",
            str(TINY_EPISODES),
            "--val_episodes_per_task",
            "1",
            "--max_frames",
            str(TINY_MAX_FRAMES),
            "--workers",
            "2",
            "--seed",
            "7",
        ]
    )
    return out


@pytest.fixture(scope="session")
def bridge_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("bridge") / "ds")
    return rlds_fixtures.write_in_subprocess(out, "bridge", [5, 3, 7, 2], height=16, width=16)


@pytest.fixture(scope="session")
def oxe_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Open-X layout with non-square (12x20) images and a dict action."""
    out = str(tmp_path_factory.mktemp("oxe") / "ds")
    return rlds_fixtures.write_in_subprocess(out, "oxe_bridge", [4, 6, 3], height=12, width=20)


def tiny_laq_config(data_dir: str, **train):
    from experiments import laq as laq_experiment

    c = laq_experiment.get_config("tiny")
    c.data.dir = data_dir
    c.train.update(train)
    return c


@pytest.fixture(scope="session")
def full_run(metaworld_dir: str, tmp_path_factory: pytest.TempPathFactory):
    """A tiny LAQ run, uninterrupted: 6 steps, checkpoints at 3 and 6."""
    import jax

    from lapa_jax.trainer import Trainer

    workdir = str(tmp_path_factory.mktemp("full"))
    state = Trainer(tiny_laq_config(metaworld_dir), workdir).run()
    return workdir, jax.device_get(state)


@pytest.fixture(scope="session")
def labelled_dir(metaworld_dir: str, full_run, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny Meta-World dataset labelled by the tiny quantizer (one shard per episode,
    code vectors kept), through the labeller's CLI in a subprocess (it imports TF)."""
    laq, _ = full_run
    dst = str(tmp_path_factory.mktemp("labelled") / "ds")
    rlds_fixtures.run_module_or_code(
        module_args=[
            "data_pipelines.label_latent_actions",
            "--src",
            metaworld_dir,
            "--spec",
            "metaworld",
            "--laq_workdir",
            laq,
            "--dst",
            dst,
            "--batch_size",
            "16",
            "--chunk_episodes",
            "1",
            "--save_vectors",
        ]
    )
    return dst


@pytest.fixture(scope="session")
def tokenizer_path(labelled_dir: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    from data_pipelines.train_tokenizer import train

    out = str(tmp_path_factory.mktemp("tokenizer") / "tok.model")
    train([labelled_dir], [os.path.join(labelled_dir, "lapa_spec.json")], out, vocab_size=300)
    return out
