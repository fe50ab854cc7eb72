"""Training stages, by the name a config's `task` field uses."""

from __future__ import annotations

from lapa_jax.tasks.base import Task


def get_task(name: str) -> type[Task]:
    if name == "laq":
        from lapa_jax.tasks.laq import LAQTask

        return LAQTask
    if name == "latent_pretrain":
        from lapa_jax.tasks.latent_pretrain import LatentPretrainTask

        return LatentPretrainTask
    if name == "action_finetune":
        from lapa_jax.tasks.action_finetune import ActionFinetuneTask

        return ActionFinetuneTask
    if name == "idm":
        from lapa_jax.tasks.idm import IDMTask

        return IDMTask
    raise ValueError(
        f"unknown task {name!r}; known tasks: ['laq', 'latent_pretrain', 'action_finetune', 'idm']"
    )
