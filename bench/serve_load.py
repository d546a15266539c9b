"""Load test of `redheart serve` on loopback, against the command line's throughput on the same texts.

1. Reference: what `redheart predict --input` does after start-up (a Predictor, batches of 64, a fresh
   embedding cache) on the texts of the 8-client level, in its own process: texts/s.
2. `redheart serve` in its own process with a fresh embedding cache, then 1, 8 and 32 concurrent clients, each
   sending one new text per request (every text of the run is distinct, so none is in the cache), a fixed
   number of requests per level and a time limit per level: requests/s, texts/s, p50/p95/p99 latency, errors.
3. The ratios: 8-client texts/s over the reference (target >= 0.9: batching across requests keeps the command
   line's throughput) and the 1-client p95 latency of one new text (target < 250 ms).

The texts are Scruples anecdotes (bench/data), title and body, as a user would send them. Without --model the
bench builds a stand-in final model: the `small` preset's architecture and the MiniLM encoder, untrained
weights, calibrators and decision rule fitted on a few synthetic records (speed does not depend on the
weights). Everything stops by itself: each level ends at its request count or its time limit, and the server
is stopped (SIGTERM, graceful) at the end.

    python bench/serve_load.py [--model DIR] [--requests 60 256 256] [--level-seconds 120] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ROOT / "bench" / "data" / "scruples_texts_30k.jsonl.gz"
CLIENTS = (1, 8, 32)

REFERENCE = """
import json, sys, time
from redheart.infer import InputRow, Predictor, predict_rows
args = json.loads(sys.argv[1])
records = [json.loads(line) for line in open(args["texts"], encoding="utf-8")]
predictor = Predictor(args["model"], cache_dir=args["cache"])
started = time.perf_counter()
rows = list(predict_rows(predictor, (InputRow(i, r) for i, r in enumerate(records, 1)), 64))
seconds = time.perf_counter() - started
print(json.dumps({"texts": len(rows), "seconds": seconds, "texts_per_s": len(rows) / seconds}))
"""


def load_texts(n: int) -> list[dict]:
    out = []
    with gzip.open(TEXTS, "rt", encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            out.append({"title": record.get("title") or "", "text": record["text"]})
            if len(out) == n:
                break
    return out


def stand_in_model(folder: Path) -> Path:
    """The small preset's model with the MiniLM encoder, untrained, calibrated on 60 synthetic records."""
    import random

    import torch

    from redheart.config import PRESETS, with_overrides
    from redheart.core.atomic import write_json, write_jsonl
    from redheart.core.rundir import RunDir
    from redheart.data.encode import encode_run
    from redheart.evaluate.calibration import fit_calibrators
    from redheart.evaluate.decision_rule import fit_decision_rules
    from redheart.model.model import RedHeartModel
    from redheart.select.final_model import save_final_model

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_run import synthetic_record

    config = with_overrides(PRESETS["small"], {"train.device": "cpu"})
    run = RunDir(folder)
    rng = random.Random(0)
    records = [synthetic_record(i, rng) for i in range(60)]
    write_jsonl(run.clean_records, records)
    ids = [r["id"] for r in records]
    write_json(run.split_manifest, {"train": ids[:30], "val": ids[30:45], "test": ids[45:]})
    encode_run(run, config.encoder, cache_dir=folder / "cache", progress=False)
    torch.manual_seed(0)
    model = RedHeartModel(config.model, input_dim=config.encoder.dim, max_segments=config.encoder.max_segments)
    info = {"candidate": {"name": "stand-in: small preset, untrained"}}
    save_final_model(model, run.final_model, config, config.encoder.dim, config.encoder.max_segments, info)
    fit_calibrators(run, with_overrides(config, {"calibration.folds": 3}))
    fit_decision_rules(run, config)
    return run.final_model


def reference(model: Path, texts: list[dict], work: Path) -> dict:
    path = work / "reference.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in texts), encoding="utf-8")
    args = {"model": str(model), "texts": str(path), "cache": str(work / "cache_reference")}
    out = subprocess.run(
        [sys.executable, "-c", REFERENCE, json.dumps(args)], capture_output=True, text=True, check=True, timeout=900
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(model: Path, work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "redheart", "serve", "--model", str(model), "--port", str(port)]
    command += ["--cache", str(work / "cache_server")]
    log = open(work / "server.log", "w")  # noqa: SIM115 (closed with the process)
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"the server exited ({child.returncode}); see {work / 'server.log'}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return child, url
        except httpx.TransportError:
            time.sleep(0.2)
    child.kill()
    raise RuntimeError("the server did not answer /health within 120 s")


async def level(url: str, texts: list[dict], clients: int, seconds: float) -> dict:
    """`clients` workers, each sending one text per request until the texts or the time run out."""
    queue = list(reversed(texts))
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while queue and time.perf_counter() < stop_at:
            record = queue.pop()
            started = time.perf_counter()
            try:
                answer = await client.post(f"{url}/predict", json={"texts": [record]}, timeout=120)
                ok = answer.status_code == 200 and len(answer.json()["predictions"]) == 1
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - started)
            errors += not ok

    started = time.perf_counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    wall = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    done = len(latencies)
    return {
        "clients": clients,
        "requests": done,
        "errors": errors,
        "seconds": wall,
        "requests_per_s": done / wall,
        "texts_per_s": (done - errors) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "stopped_by_time": done < len(texts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a final-model folder (default: the stand-in described above)")
    parser.add_argument("--requests", type=int, nargs=3, default=(60, 256, 256), help="per level: 1, 8, 32 clients")
    parser.add_argument("--level-seconds", type=float, default=120.0, help="time limit of each level")
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        work = Path(tmp)
        model = args.model or stand_in_model(work / "stand_in")
        counts = dict(zip(CLIENTS, args.requests))
        texts = load_texts(sum(counts.values()))
        by_level, start = {}, 0
        for clients in CLIENTS:  # distinct texts per level: every request is a new text
            by_level[clients] = texts[start : start + counts[clients]]
            start += counts[clients]
        print(f"model {model}; load average before: {os.getloadavg()[0]:.2f}", flush=True)
        ref = reference(model, by_level[8], work)
        print(f"reference (predict's loop, batches of 64, fresh cache): {ref['texts_per_s']:.1f} texts/s", flush=True)
        server, url = start_server(model, work)
        rows = []
        try:
            for clients in CLIENTS:
                rows.append(asyncio.run(level(url, by_level[clients], clients, args.level_seconds)))
                print(json.dumps(rows[-1]), flush=True)
            batches = httpx.get(f"{url}/health").json()["batches_run"]
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    print("\n| clients | requests | errors | requests/s | texts/s | p50 ms | p95 ms | p99 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['clients']} | {r['requests']} | {r['errors']} | {r['requests_per_s']:.1f} | {r['texts_per_s']:.1f} "
            f"| {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} |"
        )
    eight = next(r for r in rows if r["clients"] == 8)
    one = next(r for r in rows if r["clients"] == 1)
    ratio = eight["texts_per_s"] / ref["texts_per_s"]
    print(f"\nCLI reference on the 8-client texts: {ref['texts_per_s']:.1f} texts/s ({ref['texts']} texts)")
    print(f"8 clients / CLI: {ratio:.2f} (target >= 0.9); 1-client p95 of a new text: {one['p95_ms']:.0f} ms (< 250)")
    print(f"forward passes run by the server: {batches} for {sum(r['requests'] for r in rows)} requests")
    print(f"load average after: {os.getloadavg()[0]:.2f} (2 cores, shared)")
    if args.out:
        args.out.write_text(json.dumps({"reference": ref, "levels": rows, "ratio_8_clients": ratio}, indent=2))


if __name__ == "__main__":
    main()
