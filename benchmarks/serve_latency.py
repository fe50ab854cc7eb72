"""Latency and throughput of the policy server on loopback, from concurrent clients.

    python -m benchmarks.serve_latency --workdir runs/finetune [--clients 8] [--requests 40]

Starts `lapa_jax.serve` (uvicorn) in this process on a free port, then `--clients`
threads each send `--requests` POST /act requests with a 64x64 PNG camera-sized image
and an instruction, one after another. Reports latency percentiles per request and
requests/s over the whole run (JSON, default results/serve_latency.json).
"""

from __future__ import annotations

import argparse
import base64
import io
import socket
import threading
import time

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=40, help="per client")
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--out", default="results/serve_latency.json")
    args = p.parse_args()

    import httpx
    import uvicorn
    from PIL import Image

    from benchmarks.common import write_result
    from lapa_jax.policy import Policy
    from lapa_jax.serve import make_app

    policy = Policy.load(args.workdir, batch_size=1)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(make_app(policy), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    rng = np.random.default_rng(0)
    img = (rng.random((args.image_size, args.image_size, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    body = {"image": base64.b64encode(buf.getvalue()).decode(), "instruction": "open the drawer"}
    with httpx.Client() as c:  # warm-up: compilation
        assert c.post(f"{url}/act", json=body).status_code == 200
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=60) as c:
            for _ in range(args.requests):
                t0 = time.perf_counter()
                r = c.post(f"{url}/act", json=body)
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    failures[0] += r.status_code != 200

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    server.should_exit = True
    thread.join(timeout=10)
    lat = np.asarray(latencies) * 1000
    result = {
        "workdir": args.workdir,
        "policy": policy.describe(),
        "clients": args.clients,
        "requests": len(lat),
        "failures": int(failures[0]),
        "requests_per_s": len(lat) / wall,
        "latency_ms": {f"p{q}": float(np.percentile(lat, q)) for q in (50, 90, 99)},
        "latency_ms_mean": float(lat.mean()),
    }
    print(
        f"{result['requests']} requests from {args.clients} clients: {result['requests_per_s']:.1f} "
        f"requests/s, latency p50 {result['latency_ms']['p50']:.0f} ms, p90 "
        f"{result['latency_ms']['p90']:.0f} ms, p99 {result['latency_ms']['p99']:.0f} ms, "
        f"{result['failures']} failures"
    )
    write_result(args.out, "serve_latency", result)


if __name__ == "__main__":
    main()
