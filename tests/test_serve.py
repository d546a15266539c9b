"""`redheart serve` on loopback (127.0.0.1): predictions for one text or a batch, health, model card, OpenAPI page,
request limits, hostile requests, batching across concurrent requests, and a graceful shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
import uvicorn

from redheart.architecture import VERDICTS
from redheart.infer import Predictor
from redheart.serve import Batching, Limits, create_app

from tiny_run import make_final_model

LIMITS = Limits(max_texts=50, max_chars=2_000, max_body_bytes=64 * 1024)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_final_model(tmp_path_factory.mktemp("run"))


@contextmanager
def serving(predictor: Predictor, batching: Batching | None = None):
    """A uvicorn server in a thread on a free loopback port; yields (base URL, app, server)."""
    app = create_app(predictor, LIMITS, batching or Batching())
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app, server
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def service(model_dir, tmp_path_factory):
    predictor = Predictor(model_dir, cache_dir=tmp_path_factory.mktemp("cache"))
    with serving(predictor) as (url, app, _):
        yield url, predictor


def test_one_text_or_a_batch_gives_what_the_python_api_gives(service):
    url, predictor = service
    one = httpx.post(f"{url}/predict", json={"text": "apple apple my friend"})
    assert one.status_code == 200
    assert one.json()["predictions"] == [predictor.predict("apple apple my friend")[0].to_dict()]
    batch = ["brick brick said", {"id": "c1", "title": "Cloud", "text": "cloud cloud"}, "ember"]
    many = httpx.post(f"{url}/predict", json={"texts": batch})
    assert many.status_code == 200
    # One request alone in the queue is one batch of its three texts, as predict() runs them: the same floats.
    assert many.json()["predictions"] == [p.to_dict() for p in predictor.predict(batch)]
    assert many.json()["predictions"][1]["id"] == "c1"
    assert all(p["verdict"]["label"] in VERDICTS for p in many.json()["predictions"])


def test_health_model_card_and_openapi_page(service):
    url, _ = service
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    model = httpx.get(f"{url}/model").json()
    assert model["serving"]["decision_rule"]["mode"] == "calibrated"
    assert len(model["serving"]["decision_rule"]["weights"]) == len(VERDICTS)
    assert model["limits"]["max_texts"] == LIMITS.max_texts
    docs = httpx.get(f"{url}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = httpx.get(f"{url}/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"text", "texts"} and "RecordIn" in spec["components"]["schemas"]


HOSTILE = {
    "wrong JSON": (b'{"text": "unclosed', 422),
    "missing field": (b"{}", 422),
    "unknown field": (b'{"txt": "a typo"}', 422),
    "wrong type": (b'{"texts": "not a list"}', 422),
    "non-UTF-8": (b'{"text": "caf\xe9"}', 422),
    "huge body": (b'{"text": "' + b"x" * (LIMITS.max_body_bytes + 1) + b'"}', 413),
    "10,000 texts": (json.dumps({"texts": ["t"] * 10_000}).encode(), 413),
    "text over the character limit": (json.dumps({"text": "w" * (LIMITS.max_chars + 1)}).encode(), 413),
}


def test_hostile_requests_each_get_a_4xx_with_a_message_and_the_server_keeps_answering(service):
    url, _ = service
    for case, (body, status) in HOSTILE.items():
        answer = httpx.post(f"{url}/predict", content=body, headers={"content-type": "application/json"})
        assert answer.status_code == status, (case, answer.text)
        assert answer.json()["detail"], case
        assert httpx.get(f"{url}/health").status_code == 200, case
    assert httpx.post(f"{url}/predict", json={"text": "still answering"}).status_code == 200


def test_concurrent_requests_share_forward_passes(model_dir, tmp_path):
    predictor = Predictor(model_dir, cache_dir=tmp_path)
    calls: list[int] = []
    gate = threading.Event()
    run_batch = predictor.predict_batch

    def counted(records):
        calls.append(len(records))
        if len(calls) == 1:  # hold the first pass, so the other requests queue up behind it
            assert gate.wait(30)
        return run_batch(records)

    predictor.predict_batch = counted  # type: ignore[method-assign]
    clients = 8
    batching = Batching(max_batch=64, max_wait_ms=1)
    with serving(predictor, batching) as (url, app, _), ThreadPoolExecutor(clients) as pool:
        answers = [pool.submit(httpx.post, f"{url}/predict", json={"text": f"text {i}"}) for i in range(clients)]
        deadline = time.monotonic() + 30
        while not calls or app.state.batcher.pending() < clients - calls[0]:
            assert time.monotonic() < deadline, "the requests did not queue"
            time.sleep(0.005)
        gate.set()
        assert [a.result().status_code for a in answers] == [200] * clients
    # One request per forward pass would be 8 passes; the held pass and one more hold all 8 texts.
    assert len(calls) == 2 and sum(calls) == clients


def test_shutdown_answers_the_request_in_flight(model_dir, tmp_path):
    predictor = Predictor(model_dir, cache_dir=tmp_path)
    gate = threading.Event()
    run_batch = predictor.predict_batch

    def held(records):
        assert gate.wait(30)
        return run_batch(records)

    predictor.predict_batch = held  # type: ignore[method-assign]
    with serving(predictor) as (url, _, server), ThreadPoolExecutor(1) as pool:
        answer = pool.submit(httpx.post, f"{url}/predict", json={"text": "in flight"}, timeout=60)
        time.sleep(0.2)  # the request is in the batcher, held
        server.should_exit = True  # what SIGTERM sets
        time.sleep(0.2)
        with pytest.raises(httpx.ConnectError):  # no new connections once shutting down
            httpx.get(f"{url}/health", timeout=5)
        gate.set()
        assert answer.result().status_code == 200


def test_the_serve_command_starts_and_stops_on_sigterm(model_dir, tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    command = [sys.executable, "-m", "redheart", "serve", "--model", str(model_dir), "--port", str(port)]
    child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ})
    try:
        deadline = time.monotonic() + 60
        while True:
            assert child.poll() is None and time.monotonic() < deadline, "serve did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        assert httpx.post(f"http://127.0.0.1:{port}/predict", json={"text": "hello"}).status_code == 200
        child.send_signal(signal.SIGTERM)
        # uvicorn shuts down, then re-raises the signal so the exit status says what ended the process.
        assert child.wait(30) == -signal.SIGTERM
        assert "Application shutdown complete" in child.stderr.read()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
