"""Train any stage: python -m lapa_jax.train --config experiments/laq.py:tiny --workdir DIR

Overrides: --config.train.steps=100 --config.mesh.data=2 ... (ml_collections).
Multi-process: pass --coordinator_address, --num_processes and --process_id (or let
jax.distributed.initialize() find them on a TPU pod / SLURM cluster with --distributed).
`--cpu_devices N` splits a CPU host into N XLA devices (data parallel over its cores).
Re-running with the workdir of an existing run resumes it exactly.
"""

from __future__ import annotations

import logging
import os
import sys


def _cpu_devices_from_argv(argv: list[str]) -> int:
    for i, arg in enumerate(argv):
        if arg.startswith("--cpu_devices="):
            return int(arg.split("=", 1)[1])
        if arg == "--cpu_devices" and i + 1 < len(argv):
            return int(argv[i + 1])
    return 0


# XLA reads the device count when JAX first initialises a backend, which the imports
# below may already do; so --cpu_devices is applied from argv before them.
if __name__ == "__main__" and _cpu_devices_from_argv(sys.argv) > 0:
    _flag = f"--xla_force_host_platform_device_count={_cpu_devices_from_argv(sys.argv)}"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from lapa_jax.trainer import Trainer  # noqa: E402

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
    "split the host CPU into N XLA devices (XLA runs some CPU work single-threaded per "
    "device, so N devices use N cores); 0: leave as is",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    del argv
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Orbax and TFDS log every file they touch at INFO.
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("absl").setLevel(logging.WARNING)
    if _COORD.value is not None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(_COORD.value, _NPROC.value, _PID.value)
    elif _DISTRIBUTED.value:
        jax.distributed.initialize()
    if _CPU_DEVICES.value > 0 and jax.local_device_count() != _CPU_DEVICES.value:
        logging.warning(
            "--cpu_devices %d did not take effect: %d local devices",
            _CPU_DEVICES.value,
            jax.local_device_count(),
        )
    Trainer(_CONFIG.value, _WORKDIR.value).run()


if __name__ == "__main__":
    app.run(main)
