"""Orbax checkpoints of the train state together with the data iterator's position.

A resumed run restores the model, the optimizer, the task's own state (e.g. codebook
usage counters) and the exact next batch. An unreadable latest checkpoint (truncated,
corrupt) falls back to the previous one with a warning; a checkpoint whose shapes do
not match the config is refused with a message listing the mismatches.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    pass


def _path(keys: Any) -> str:
    """A container-agnostic path ("opt_state/1/0/mu/encoder/..."): the saved metadata
    holds dicts and lists where the live state holds dataclasses and named tuples."""
    parts = []
    for k in keys:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _shape_mismatches(abstract: Any, metadata: Any) -> list[str]:
    want = {_path(k): v for k, v in jax.tree_util.tree_leaves_with_path(abstract)}
    have = {_path(k): v for k, v in jax.tree_util.tree_leaves_with_path(metadata)}
    problems = []
    for key in sorted(set(want) | set(have)):
        if key not in have:
            problems.append(f"{key}: missing from the checkpoint")
        elif key not in want:
            problems.append(f"{key}: in the checkpoint but not in the model")
        else:
            ws, hs = (
                tuple(getattr(want[key], "shape", ())),
                tuple(getattr(have[key], "shape", ()) or ()),
            )
            if ws != hs:
                problems.append(f"{key}: checkpoint has shape {hs}, config expects {ws}")
    return problems


class Checkpointer:
    def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
            },
        )

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, data_iterator: Any | None, force: bool = False) -> None:
        items: dict[str, Any] = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def _set_aside(self, steps: list[int]) -> None:
        """Moves unreadable checkpoints out of the way (never deletes them), so the run
        can save those steps again."""
        if not steps or jax.process_index() != 0:
            return
        aside = os.path.join(os.path.dirname(self.directory), "checkpoints_unreadable")
        os.makedirs(aside, exist_ok=True)
        for step in steps:
            src = os.path.join(self.directory, str(step))
            if os.path.exists(src):
                dst = os.path.join(aside, f"{step}.{int(time.time())}")
                os.rename(src, dst)
                log.warning("Moved unreadable checkpoint step %d to %s", step, dst)
        self.manager.reload()

    def restore(
        self, abstract_state: Any, data_iterator: Any | None, step: int | None = None
    ) -> tuple[Any, int] | None:
        """Restores the newest readable checkpoint (or exactly `step`) into
        `abstract_state`'s shapes and shardings (and the iterator's position); None if
        there is none."""
        steps = self.all_steps()
        if step is not None:
            if step not in steps:
                raise FileNotFoundError(
                    f"no checkpoint for step {step} in {self.directory}; it has {steps}"
                )
            steps = [step]
        unreadable: list[int] = []
        for step in reversed(steps):
            try:
                meta = self.manager.item_metadata(step)
                state_meta = meta["state"] if meta is not None else None
            except Exception as e:
                log.warning(
                    "Checkpoint step %d has unreadable metadata (%s); trying an older one", step, e
                )
                unreadable.append(step)
                continue
            if state_meta is None:
                log.warning("Checkpoint step %d has no state metadata; trying an older one", step)
                unreadable.append(step)
                continue
            problems = _shape_mismatches(abstract_state, state_meta)
            if problems:
                raise CheckpointMismatchError(
                    f"checkpoint {self.directory} step {step} does not match the config:\n  "
                    + "\n  ".join(problems[:20])
                    + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
                )
            items: dict[str, Any] = {"state": ocp.args.StandardRestore(abstract_state)}
            if data_iterator is not None:
                items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as e:
                log.warning(
                    "Checkpoint step %d could not be restored (%s: %s); falling back to an older one",
                    step,
                    type(e).__name__,
                    str(e)[:300],
                )
                unreadable.append(step)
                continue
            self._set_aside(unreadable)
            return restored["state"], step
        if steps:
            raise RuntimeError(
                f"none of the checkpoints {steps} in {self.directory} could be restored"
            )
        return None


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
