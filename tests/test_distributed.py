"""Two real processes through jax.distributed train the tiny LAQ config together."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from tests.rlds_fixtures import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_training_smoke(metaworld_dir, tmp_path):
    workdir = str(tmp_path / "dist")
    port = free_port()
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("XLA_FLAGS", None)  # --cpu_devices below must give each process 2 devices
    procs = []
    for pid in range(2):
        cmd = [
            sys.executable,
            "-m",
            "lapa_jax.train",
            "--config",
            os.path.join(REPO, "experiments", "laq.py:tiny"),
            "--workdir",
            workdir,
            f"--config.data.dir={metaworld_dir}",
            "--config.train.steps=4",
            "--config.train.checkpoint_every=2",
            "--config.train.image_every=0",
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={pid}",
            "--cpu_devices=2",
        ]
        procs.append(
            subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    assert "4 devices, 2 processes" in outs[0]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        lines = [json.loads(x) for x in f]
    assert [x["step"] for x in lines] == [2, 4] and all(isinstance(x["loss"], float) for x in lines)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
    # Each process saved its own data iterator position.
    data_files = os.listdir(os.path.join(workdir, "checkpoints", "4", "data"))
    assert len([f for f in data_files if "process" in f]) == 2, data_files
