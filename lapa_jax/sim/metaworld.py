"""Meta-World environments, a lean offscreen renderer and scripted-expert rollouts.

This module must never import TensorFlow (directly or through TFDS): TensorFlow and
MuJoCo's GL rendering crash when they share a process. Dataset writers run these
rollouts in spawned worker processes; closed-loop evaluation imports only JAX.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")

# One natural-language instruction per task, in the imperative voice a human
# annotator would use (LAPA prompts "What action should the robot take to {instr}?").
TASK_INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "put the ring on the peg",
    "basketball-v3": "dunk the basketball into the hoop",
    "bin-picking-v3": "move the puck from one bin to the other",
    "box-close-v3": "put the lid on the box",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "press the button from the top behind the wall",
    "button-press-v3": "press the button",
    "button-press-wall-v3": "press the button behind the wall",
    "coffee-button-v3": "push the button on the coffee machine",
    "coffee-pull-v3": "pull the mug out of the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "turn the dial",
    "disassemble-v3": "take the ring off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "lock the door by turning the lock",
    "door-open-v3": "open the door",
    "door-unlock-v3": "unlock the door by turning the lock",
    "hand-insert-v3": "put the hand into the hole",
    "drawer-close-v3": "close the drawer",
    "drawer-open-v3": "open the drawer",
    "faucet-open-v3": "turn the faucet on",
    "faucet-close-v3": "turn the faucet off",
    "hammer-v3": "hammer the nail into the wall",
    "handle-press-side-v3": "press the handle down sideways",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up sideways",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "pick-place-wall-v3": "pick up the puck and place it behind the wall",
    "pick-out-of-hole-v3": "pick the peg out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "plate-slide-v3": "slide the plate into the goal",
    "plate-slide-side-v3": "slide the plate sideways into the goal",
    "plate-slide-back-v3": "slide the plate back out of the goal",
    "plate-slide-back-side-v3": "slide the plate back sideways out of the goal",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "peg-unplug-side-v3": "unplug the peg from the side",
    "soccer-v3": "kick the ball into the goal",
    "stick-push-v3": "grab the stick and push the box with it",
    "stick-pull-v3": "grab the stick and pull the box with it",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck past the wall to the goal",
    "push-back-v3": "pull the puck back to the goal",
    "reach-v3": "reach to the goal position",
    "reach-wall-v3": "reach over the wall to the goal position",
    "shelf-place-v3": "put the puck on the shelf",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-open-v3": "open the window",
    "window-close-v3": "close the window",
}

# Cameras mounted upside-down in the Meta-World XML: a 180-degree rotation makes them
# upright (a vertical flip alone would mirror the scene).
ROTATED_CAMERAS = frozenset({"corner"})

# The default dataset's tasks (data_pipelines.metaworld_rlds) and closed-loop evaluation's.
DEFAULT_TASKS = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "button-press-topdown-v3",
)

STATE_DIM = 4  # hand xyz + gripper opening, the proprioceptive part of the observation
FULL_STATE_DIM = 39  # the goal-observable Meta-World observation vector
ACTION_DIM = 4  # delta xyz + gripper effort (positive closes)


def check_task(task: str) -> None:
    if task not in TASK_INSTRUCTIONS:
        raise ValueError(
            f"Unknown Meta-World task {task!r}; known tasks: {sorted(TASK_INSTRUCTIONS)}"
        )


def make_env(task: str) -> Any:
    """A goal-observable environment whose object/goal layout is re-drawn at each reset."""
    check_task(task)
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

    env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{task}-goal-observable"](seed=0)
    env._freeze_rand_vec = False
    env.seeded_rand_vec = True
    return env


def reset_env(env: Any, seed: int) -> np.ndarray:
    """Resets to the object/goal layout that `seed` draws; returns the observation."""
    env.seed(seed)
    obs, _ = env.reset()
    return obs


def step_held(env: Any, action: np.ndarray, repeat: int) -> tuple[np.ndarray, float, bool, bool]:
    """Holds `action` for `repeat` simulator steps (one stored frame): the observation,
    the summed reward, whether the task succeeded at any of them, and truncation."""
    reward, success, truncated = 0.0, False, False
    obs = None
    for _ in range(repeat):
        obs, r, _, truncated, info = env.step(action)
        reward += float(r)
        success = success or bool(info["success"])
        if truncated:
            break
    return obs, reward, success, bool(truncated)


def make_expert(task: str) -> Any:
    from metaworld.policies import ENV_POLICY_MAP

    return ENV_POLICY_MAP[task]()


class LeanRenderer:
    """An offscreen renderer without shadows, reflections, skybox or multisampling.

    Meta-World's own `env.render()` keeps all of those on and runs at ~14 frames/s;
    at 64x64 none of them is visible, and dropping them gives >10x the rate.
    """

    def __init__(self, model: Any, image_size: int, camera: str, rotate_180: bool | None = None):
        import mujoco

        self._mujoco = mujoco
        cameras = [model.camera(i).name for i in range(model.ncam)]
        if camera not in cameras:
            raise ValueError(f"Unknown camera {camera!r}; the model has {cameras}")
        model.vis.quality.shadowsize = 0
        model.vis.quality.offsamples = 0
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, image_size)
        model.vis.global_.offheight = max(model.vis.global_.offheight, image_size)
        self._renderer = mujoco.Renderer(model, image_size, image_size)
        flags = self._renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0
        self.camera = camera
        self.rotate_180 = camera in ROTATED_CAMERAS if rotate_180 is None else rotate_180

    def render(self, data: Any) -> np.ndarray:
        """Returns an upright uint8 image of shape [H, W, 3]."""
        self._renderer.update_scene(data, camera=self.camera)
        img_HWC = self._renderer.render()
        if self.rotate_180:
            img_HWC = img_HWC[::-1, ::-1]
        return np.ascontiguousarray(img_HWC)

    def close(self) -> None:
        self._renderer.close()


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    image_size: int = 64
    camera: str = "corner"
    max_frames: int = 60  # stored frames per episode at most
    action_repeat: int = 2  # simulator steps per stored frame (the action is held)
    action_noise: float = 0.1  # std of Gaussian noise added to the expert action
    frames_after_success: int = 2  # keep recording this many frames once successful

    def validate(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if self.max_frames < 2:
            raise ValueError(f"max_frames must be >= 2, got {self.max_frames}")
        if self.action_repeat < 1:
            raise ValueError(f"action_repeat must be >= 1, got {self.action_repeat}")
        if not np.isfinite(self.action_noise) or self.action_noise < 0:
            raise ValueError(f"action_noise must be finite and >= 0, got {self.action_noise}")
        if self.frames_after_success < 0:
            raise ValueError(f"frames_after_success must be >= 0, got {self.frames_after_success}")


def episode_seed(base_seed: int, task: str, episode_index: int, attempt: int = 0) -> int:
    """A stable per-episode seed: independent of worker count and generation order."""
    task_key = [ord(c) for c in task]
    seq = np.random.SeedSequence([base_seed, episode_index, attempt, *task_key])
    return int(seq.generate_state(1, dtype=np.uint32)[0])


class ExpertRoller:
    """Rolls out scripted experts; keeps one env and renderer per task (they are slow to build)."""

    def __init__(self, config: RolloutConfig):
        config.validate()
        self.config = config
        self._envs: dict[str, tuple[Any, Any, LeanRenderer]] = {}

    def _get(self, task: str) -> tuple[Any, Any, LeanRenderer]:
        if task not in self._envs:
            env = make_env(task)
            renderer = LeanRenderer(env.model, self.config.image_size, self.config.camera)
            self._envs[task] = (env, make_expert(task), renderer)
        return self._envs[task]

    def rollout(self, task: str, seed: int) -> dict[str, Any]:
        """One expert episode as numpy arrays, one entry per stored frame.

        Step t holds the frame observed at t, the action then held for `action_repeat`
        simulator steps, and the summed reward of those steps (RLDS convention).
        """
        cfg = self.config
        env, expert, renderer = self._get(task)
        rng = np.random.default_rng(seed)
        obs = reset_env(env, seed)
        images, states, full_states, actions, rewards = [], [], [], [], []
        success, success_at = False, None
        for t in range(cfg.max_frames):
            images.append(renderer.render(env.data))
            states.append(obs[:STATE_DIM].astype(np.float32))
            full_states.append(obs[:FULL_STATE_DIM].astype(np.float32))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                action = np.asarray(expert.get_action(obs), dtype=np.float64)
            action = action + cfg.action_noise * rng.standard_normal(ACTION_DIM)
            action = np.clip(action, -1.0, 1.0).astype(np.float32)
            obs, reward, succeeded, truncated = step_held(env, action, cfg.action_repeat)
            success = success or succeeded
            actions.append(action)
            rewards.append(reward)
            if success and success_at is None:
                success_at = t
            if truncated or (success_at is not None and t - success_at >= cfg.frames_after_success):
                break
        n = len(images)
        is_last = np.zeros(n, bool)
        is_last[-1] = True
        is_first = np.zeros(n, bool)
        is_first[0] = True
        return {
            "images": np.stack(images),
            "states": np.stack(states),
            "full_states": np.stack(full_states),
            "actions": np.stack(actions),
            "rewards": np.asarray(rewards, np.float32),
            "is_first": is_first,
            "is_last": is_last,
            # A successful episode ends in a goal state; a capped one was cut short.
            "is_terminal": is_last & success,
            "success": success,
            "task": task,
            "instruction": TASK_INSTRUCTIONS[task],
            "seed": seed,
        }

    def close(self) -> None:
        for env, _, renderer in self._envs.values():
            renderer.close()
            env.close()
        self._envs.clear()


_WORKER_ROLLER: ExpertRoller | None = None


def _worker_init(config: RolloutConfig) -> None:
    global _WORKER_ROLLER
    _WORKER_ROLLER = ExpertRoller(config)


def worker_rollout_fn(job: tuple[str, int]) -> dict[str, Any]:
    """Rolls out (task, seed) in a pool worker made by `rollout_pool`."""
    assert _WORKER_ROLLER is not None, "worker was not initialised"
    return _WORKER_ROLLER.rollout(*job)


def rollout_pool(config: RolloutConfig, workers: int) -> Any:
    """A spawn-context process pool whose workers roll out episodes.

    Spawn (not fork) so that workers never inherit a TensorFlow runtime from the parent.
    Use `pool.imap(worker_rollout_fn, [(task, seed), ...])` for ordered results.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    return ctx.Pool(workers, initializer=_worker_init, initargs=(config,))
