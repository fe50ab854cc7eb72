"""Many Meta-World episodes stepped in lock-step, simulated and rendered in spawned
worker processes.

Closed-loop evaluation batches the policy over episodes, so it needs a batch of
environments; and MuJoCo's GL rendering crashes in a process that has loaded
TensorFlow, which a caller (a test session, a notebook) may well have. Spawned workers
start clean, hold the environments and renderers, and exchange only small numpy arrays
with the caller over pipes.

    env = MetaWorldVecEnv(RolloutConfig(image_size=64), num_workers=2)
    images = env.reset({0: ("reach-v3", 123), 1: ("push-v3", 456)})   # slot -> image
    out = env.step({0: action0, 1: action1})    # slot -> (image, success, truncated)
    env.close()
"""

from __future__ import annotations

import contextlib
import traceback
from typing import Any

import numpy as np

from lapa_jax.sim import metaworld as mw


class WorkerError(RuntimeError):
    """An environment worker failed; the message carries its traceback."""


def _worker(conn: Any, config: mw.RolloutConfig) -> None:
    envs: dict[int, tuple[str, Any, mw.LeanRenderer]] = {}

    def env_for(slot: int, task: str) -> tuple[Any, mw.LeanRenderer]:
        held = envs.get(slot)
        if held is None or held[0] != task:
            if held is not None:
                held[2].close()
                held[1].close()
            env = mw.make_env(task)
            envs[slot] = (task, env, mw.LeanRenderer(env.model, config.image_size, config.camera))
        return envs[slot][1], envs[slot][2]

    try:
        while True:
            cmd, payload = conn.recv()
            try:
                if cmd == "close":
                    break
                if cmd == "reset":
                    out = []
                    for slot, task, seed in payload:
                        env, renderer = env_for(slot, task)
                        mw.reset_env(env, seed)
                        out.append((slot, renderer.render(env.data)))
                elif cmd == "step":
                    out = []
                    for slot, action in payload:
                        _, env, renderer = envs[slot]
                        _, _, success, truncated = mw.step_held(env, action, config.action_repeat)
                        out.append((slot, renderer.render(env.data), success, truncated))
                else:
                    raise ValueError(f"unknown command {cmd!r}")
                conn.send(("ok", out))
            except Exception:  # reported to the caller, which raises it
                conn.send(("error", traceback.format_exc()))
    finally:
        for _, env, renderer in envs.values():
            renderer.close()
            env.close()
        conn.close()


class MetaWorldVecEnv:
    """Episode slots spread over `num_workers` spawned processes (slot i lives in
    worker i % num_workers). A slot keeps its environment while its task stays the same."""

    def __init__(self, config: mw.RolloutConfig, num_workers: int = 2):
        import multiprocessing as mp

        config.validate()
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.config = config
        ctx = mp.get_context("spawn")  # never inherit a TensorFlow runtime or GL state
        self._conns, self._procs = [], []
        for _ in range(num_workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, config), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)

    def _call(self, cmd: str, per_slot: dict[int, Any]) -> list[Any]:
        jobs: list[list[Any]] = [[] for _ in self._conns]
        for slot, item in per_slot.items():
            jobs[slot % len(self._conns)].append((slot, *item))
        busy = [w for w, job in enumerate(jobs) if job]
        for w in busy:  # send all first so the workers simulate in parallel
            self._conns[w].send((cmd, jobs[w]))
        out: list[Any] = []
        errors = []
        for w in busy:
            status, result = self._conns[w].recv()
            if status == "ok":
                out.extend(result)
            else:
                errors.append(f"worker {w}:\n{result}")
        if errors:
            raise WorkerError("Meta-World worker failed: " + "\n".join(errors))
        return out

    def reset(self, episodes: dict[int, tuple[str, int]]) -> dict[int, np.ndarray]:
        """slot -> (task, seed) in; slot -> first image [H, W, 3] uint8 out."""
        for task, _ in episodes.values():
            mw.check_task(task)
        return dict(self._call("reset", episodes))

    def step(self, actions: dict[int, np.ndarray]) -> dict[int, tuple[np.ndarray, bool, bool]]:
        """slot -> action [4] in (clipped to [-1, 1], held for action_repeat simulator
        steps); slot -> (next image, succeeded during the step, truncated) out."""
        clean = {}
        for slot, a in actions.items():
            a = np.asarray(a, np.float32).reshape(-1)
            if a.shape != (mw.ACTION_DIM,) or not np.all(np.isfinite(a)):
                raise ValueError(
                    f"slot {slot}: expected a finite action [{mw.ACTION_DIM}], got {a}"
                )
            clean[slot] = (np.clip(a, -1.0, 1.0),)
        return {slot: (img, ok, trunc) for slot, img, ok, trunc in self._call("step", clean)}

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(BrokenPipeError, OSError):  # a worker that already died
                conn.send(("close", None))
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
        self._conns, self._procs = [], []

    def __enter__(self) -> MetaWorldVecEnv:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
