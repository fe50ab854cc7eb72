"""Closed-loop evaluation: chunk execution (receding horizon, temporal ensembling), and
the episode loop against Meta-World: an open-loop replay of the scripted expert's
actions through the evaluator must succeed exactly when the expert did, so seeds,
action repeat and success detection match the dataset's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lapa_jax import evaluate_policy as ep
from lapa_jax.policy import ChunkExecutor
from lapa_jax.sim import metaworld as mw

ROLLOUT = mw.RolloutConfig(image_size=32, action_noise=0.0, max_frames=60)


def test_receding_horizon_runs_the_first_steps_then_replans():
    ex = ChunkExecutor(chunk_size=4, mode="receding", execute_steps=2)
    chunk = np.arange(8, dtype=np.float32).reshape(4, 2)
    assert ex.needs_prediction()
    ex.add(chunk)
    np.testing.assert_array_equal(ex.next_action(), [0, 1])
    assert not ex.needs_prediction()
    np.testing.assert_array_equal(ex.next_action(), [2, 3])
    assert ex.needs_prediction()  # only 2 of 4 executed, then a new plan
    with pytest.raises(RuntimeError, match="no action left"):
        ex.next_action()
    whole = ChunkExecutor(chunk_size=4)  # default: the whole chunk
    whole.add(chunk)
    got = [whole.next_action() for _ in range(4)]
    np.testing.assert_array_equal(np.stack(got), chunk)
    assert whole.needs_prediction()


def test_temporal_ensembling_weights_older_predictions_first():
    decay = 0.5
    ex = ChunkExecutor(chunk_size=3, mode="ensemble", decay=decay)
    c0 = np.asarray([[0.0], [10.0], [20.0]])
    c1 = np.asarray([[100.0], [110.0], [120.0]])
    c2 = np.asarray([[200.0], [210.0], [220.0]])
    c3 = np.asarray([[300.0], [310.0], [320.0]])
    ex.add(c0)
    assert ex.next_action()[0] == 0.0  # t=0: one chunk
    ex.add(c1)
    w = np.exp(-decay * np.arange(2))
    np.testing.assert_allclose(ex.next_action()[0], (w @ [10.0, 100.0]) / w.sum(), rtol=1e-6)
    ex.add(c2)
    w = np.exp(-decay * np.arange(3))
    np.testing.assert_allclose(ex.next_action()[0], (w @ [20.0, 110.0, 200.0]) / w.sum(), rtol=1e-6)
    ex.add(c3)  # t=3: c0 no longer covers it
    np.testing.assert_allclose(
        ex.next_action()[0], (w @ [120.0, 210.0, 300.0]) / w.sum(), rtol=1e-6
    )
    ex.reset()
    with pytest.raises(RuntimeError, match="no chunk covers"):
        ex.next_action()


def test_executor_rejects_bad_settings():
    with pytest.raises(ValueError, match="execution mode"):
        ChunkExecutor(2, mode="sometimes")
    with pytest.raises(ValueError, match="execute_steps"):
        ChunkExecutor(2, execute_steps=3)
    with pytest.raises(ValueError, match="decay"):
        ChunkExecutor(2, mode="ensemble", decay=float("nan"))
    with pytest.raises(ValueError, match="expected a chunk"):
        ChunkExecutor(2).add(np.zeros((3, 4)))


class ReplayPolicy:
    """Replays fixed action sequences, one episode at a time (batch_slots=1), in chunks."""

    def __init__(self, actions_by_task: dict[str, np.ndarray], chunk_size: int):
        self.actions = actions_by_task
        self.chunk_size = chunk_size
        self.t: dict[str, int] = {}
        self.images: list[np.ndarray] = []

    def predict_batch(self, images, instructions, temperature=0.0):
        assert len(images) == 1
        self.images.append(images[0])
        task = next(k for k in self.actions if mw.TASK_INSTRUCTIONS[k] == instructions[0])
        t = self.t.get(task, 0)
        seq = self.actions[task]
        idx = np.minimum(np.arange(t, t + self.chunk_size), len(seq) - 1)
        self.t[task] = t + self.chunk_size
        return seq[idx][None]


class ConstantPolicy:
    chunk_size = 1

    def predict_batch(self, images, instructions, temperature=0.0):
        return np.zeros((len(images), 1, mw.ACTION_DIM), np.float32)


@pytest.fixture(scope="module")
def expert_episodes():
    """The scripted expert, noise-free, on the evaluator's first layout of each task."""
    tasks = ("reach-v3", "button-press-topdown-v3")
    with mw.rollout_pool(ROLLOUT, 1) as pool:
        eps = pool.map(mw.worker_rollout_fn, [(t, ep.eval_seed(0, t, 0)) for t in tasks])
    return {e["task"]: e for e in eps}


def test_replaying_the_expert_succeeds_where_it_did(expert_episodes):
    actions = {t: e["actions"] for t, e in expert_episodes.items()}
    assert all(e["success"] for e in expert_episodes.values())
    policy = ReplayPolicy(actions, chunk_size=3)
    results = ep.run_episodes(
        policy, list(actions), 1, ROLLOUT, seed=0, max_frames=60, num_workers=1, batch_slots=1
    )
    for r in results:
        e = expert_episodes[r.task]
        first_success = len(e["actions"]) - 1 - ROLLOUT.frames_after_success
        assert r.success and r.length == first_success + 1, (r.task, r.length)
        # The evaluator saw the dataset's frames: the first image of the episode, and
        # one new image per chunk (receding horizon over the whole chunk).
        np.testing.assert_array_equal(r.frames[0], e["images"][0])
        np.testing.assert_array_equal(np.stack(r.frames[:-1]), e["images"][: r.length])
    calls = sum(-(-r.length // 3) for r in results)
    assert len(policy.images) == calls


def test_failing_policy_runs_to_the_cap_and_reproduces():
    def run():
        return ep.run_episodes(
            ConstantPolicy(),
            ["reach-v3", "push-v3"],
            3,
            ROLLOUT,
            seed=5,
            max_frames=4,
            num_workers=2,
            batch_slots=4,
            record=1,
        )

    a, b = run(), run()
    assert [(r.task, r.index) for r in a] == [
        (t, i) for t in ("reach-v3", "push-v3") for i in range(3)
    ]
    assert all(not r.success and r.length == 4 for r in a)
    assert [r.seed for r in a] == [r.seed for r in b]
    assert len({r.seed for r in a}) == 6
    recorded = [r for r in a if r.frames is not None]
    assert [r.index for r in recorded] == [0, 0]
    assert all(len(r.frames) == 5 and r.frames[0].shape == (32, 32, 3) for r in recorded)
    for ra, rb in zip(recorded, [r for r in b if r.frames is not None], strict=True):
        np.testing.assert_array_equal(np.stack(ra.frames), np.stack(rb.frames))
    s = ep.summarize(a, ["reach-v3", "push-v3"])
    assert s["success_rate"] == 0.0 and s["per_task"]["push-v3"]["mean_length"] == 4.0
    # Layouts differ from the dataset's: evaluation seeds are their own family.
    assert ep.eval_seed(0, "reach-v3", 0) != mw.episode_seed(0, "reach-v3", 0)


def test_evaluator_rejects_bad_input():
    with pytest.raises(ValueError, match="Unknown Meta-World task"):
        ep.run_episodes(ConstantPolicy(), ["reach-v9"], 1, ROLLOUT)
    with pytest.raises(ValueError, match="must be >= 1"):
        ep.run_episodes(ConstantPolicy(), ["reach-v3"], 0, ROLLOUT)
    with pytest.raises(ValueError, match="image_size"):
        ep.run_episodes(
            ConstantPolicy(), ["reach-v3"], 1, dataclasses.replace(ROLLOUT, image_size=2)
        )
