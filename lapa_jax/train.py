"""Train any stage: python -m lapa_jax.train --config experiments/laq.py:tiny --workdir DIR

Overrides: --config.train.steps=100 --config.mesh.data=2 ... (ml_collections).
Multi-process: pass --coordinator_address, --num_processes and --process_id (or let
jax.distributed.initialize() find them on a TPU pod / SLURM cluster with --distributed).
Re-running with the workdir of an existing run resumes it exactly.
"""

from __future__ import annotations

import logging

import jax
from absl import app, flags
from ml_collections import config_flags

from lapa_jax.trainer import Trainer

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config file, e.g. experiments/laq.py:tiny"
)
_WORKDIR = flags.DEFINE_string("workdir", None, "run folder: checkpoints, metrics, images")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize()")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0")
_NPROC = flags.DEFINE_integer("num_processes", None, "number of processes")
_PID = flags.DEFINE_integer("process_id", None, "this process's index")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices",
    0,
    "split the host CPU into N XLA devices (data-parallel over cores); 0: leave as is",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    del argv
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if _COORD.value is not None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(_COORD.value, _NPROC.value, _PID.value)
    elif _DISTRIBUTED.value:
        jax.distributed.initialize()
    Trainer(_CONFIG.value, _WORKDIR.value).run()


if __name__ == "__main__":
    app.run(main)
