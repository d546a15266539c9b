"""`redheart serve`: the final model as an HTTP JSON service (FastAPI on uvicorn).

    POST /predict   {"text": "..."} or {"texts": ["...", {"text", "title"?, "id"?}, ...]} -> {"predictions": [...]},
                    each prediction as `redheart predict` prints it (verdict {label, argmax, distribution})
    GET  /health    {"status": "ok", ...} while the service answers
    GET  /model     the model card's facts (card.json: metadata, metrics), calibration and the decision rule
    GET  /docs      the OpenAPI page (schema at /openapi.json)

Requests are bounded before any work is done: the body's bytes (413, read as a stream and cut off at the
limit), the texts per request (413) and the characters per text (413); a body that is not JSON, not UTF-8
or not of the request's shape gets 422 with pydantic's description of what is wrong.

Predictions are batched across requests: every text joins one queue, and a single worker takes up to
`max_batch` texts at a time, waiting at most `max_wait_ms` for more to arrive after the first, then runs
one forward pass in a worker thread (so the event loop keeps accepting requests meanwhile). Eight clients
sending one text each are thus served by batched passes, as the command line's batches of 64 are.

Shutdown (SIGINT/SIGTERM, via uvicorn) is graceful: the server stops accepting connections, the requests in
flight are answered, and the worker finishes the texts already queued before the process exits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from redheart.core.atomic import read_json
from redheart.infer import Prediction, Predictor


@dataclass(frozen=True)
class Limits:
    """What one request may hold; larger requests are refused with 413 before any work."""

    max_texts: int = 256
    max_chars: int = 100_000
    max_body_bytes: int = 4 * 2**20


@dataclass(frozen=True)
class Batching:
    max_batch: int = 64  # texts per forward pass (the command line's batch)
    max_wait_ms: float = 5.0  # after the first queued text, how long to wait for others to join its batch


class RecordIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    title: str | None = None
    id: str | None = None


class PredictRequest(BaseModel):
    """One text (`text`) or a batch (`texts`: texts or records), not both."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(default=None, description="one text")
    texts: list[str | RecordIn] | None = Field(default=None, description="texts, or records {text, title?, id?}")


class VerdictOut(BaseModel):
    label: str = Field(description="the decision rule's class: the label the report's verdict macro-F1 (rule) scores")
    argmax: str = Field(description="the most probable class of the distribution")
    distribution: dict[str, float]


class PredictionOut(BaseModel):
    id: str | None = None
    emotions: dict[str, float]
    bentham_scores: dict[str, float]
    regret_factor: float
    surd_metrics: dict[str, float]
    verdict: VerdictOut
    calibration: dict[str, str]


class PredictResponse(BaseModel):
    predictions: list[PredictionOut]


class RequestRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


# ---- batching across requests ----------------------------------------------------------------------------------


class MicroBatcher:
    """One queue of texts from every request; one worker runs them in batches on a single thread."""

    def __init__(self, predict_batch: Callable[[list[dict[str, str]]], list[Prediction]], options: Batching) -> None:
        self.predict_batch = predict_batch
        self.options = options
        self.queue: asyncio.Queue[tuple[dict[str, str], asyncio.Future[Prediction]] | None] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="redheart-predict")
        self.batches = 0  # forward passes run so far
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._work())

    def pending(self) -> int:
        return self.queue.qsize()

    async def submit(self, records: Sequence[dict[str, str]]) -> list[Prediction]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in records]
        for record, future in zip(records, futures):
            self.queue.put_nowait((record, future))
        return list(await asyncio.gather(*futures))

    async def _next_batch(self) -> tuple[list[tuple[dict[str, str], asyncio.Future[Prediction]]], bool]:
        """(a batch, whether the stop marker was met); the batch waits at most max_wait_ms after its first text."""
        first = await self.queue.get()
        if first is None:
            return [], True
        batch = [first]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.max_wait_ms / 1000
        while len(batch) < self.options.max_batch:
            if self.queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                item = self.queue.get_nowait()
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        stop = False
        while not stop:
            batch, stop = await self._next_batch()
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self.executor, self.predict_batch, [r for r, _ in batch])
                self.batches += 1
            except Exception as error:  # the requests waiting on this batch get the error, the service goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():  # a client that went away leaves a cancelled future
                    future.set_result(result)

    async def stop(self) -> None:
        """Finish every text already queued, then stop the worker and its thread."""
        if self.task is not None:
            self.queue.put_nowait(None)
            await self.task
        self.executor.shutdown(wait=True)


# ---- the application -----------------------------------------------------------------------------------------------


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestRefused(413, f"request body of {declared} bytes is over the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestRefused(413, f"request body is over the limit of {limit} bytes")
    return bytes(body)


def _records(parsed: PredictRequest, limits: Limits) -> list[dict[str, str]]:
    if (parsed.text is None) == (parsed.texts is None):
        raise RequestRefused(422, "give exactly one of 'text' (one text) or 'texts' (a list)")
    items: list[str | RecordIn] = [parsed.text] if parsed.text is not None else list(parsed.texts or [])
    if not items:
        raise RequestRefused(422, "'texts' is empty")
    if len(items) > limits.max_texts:
        raise RequestRefused(413, f"{len(items)} texts in one request; the limit is {limits.max_texts}")
    records = []
    for index, item in enumerate(items):
        record = {"text": item} if isinstance(item, str) else item.model_dump(exclude_none=True)
        if len(record["text"]) > limits.max_chars:
            raise RequestRefused(
                413, f"text {index} has {len(record['text'])} characters; the limit is {limits.max_chars}"
            )
        records.append(record)
    return records


def _request_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """The request body's JSON schema for the OpenAPI page, and the definitions it refers to."""
    schema = PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    return schema, schema.pop("$defs", {})


def create_app(predictor: Predictor, limits: Limits = Limits(), batching: Batching = Batching()) -> FastAPI:
    """The service around a loaded predictor (the batcher starts and stops with the application)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher = MicroBatcher(predictor.predict_batch, batching)
        batcher.start()
        app.state.batcher = batcher
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(
        title="redheart",
        summary="Emotions, Bentham scores, regret, SURD metrics and the community verdict of first-person accounts",
        lifespan=lifespan,
    )
    schema, definitions = _request_schema()
    started = time.time()

    @app.exception_handler(RequestRefused)
    async def refused(_: Request, error: RequestRefused) -> JSONResponse:
        return JSONResponse({"detail": error.message}, status_code=error.status)

    @app.post(
        "/predict",
        response_model=PredictResponse,
        response_model_exclude_none=True,  # `id` only where the input had one, as predict prints it
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}},
        responses={413: {"description": "over a request limit"}, 422: {"description": "not a valid request"}},
    )
    async def predict(request: Request) -> dict[str, Any]:
        """Predictions for one text or a batch, in order."""
        body = await _read_body(request, limits.max_body_bytes)
        try:
            parsed = PredictRequest.model_validate_json(body)
        except ValidationError as error:
            details = error.errors(include_url=False, include_input=False, include_context=False)
            return JSONResponse({"detail": details}, status_code=422)  # type: ignore[return-value]
        results = await app.state.batcher.submit(_records(parsed, limits))
        return {"predictions": [result.to_dict() for result in results]}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Whether the service answers, with its queue and counters."""
        batcher: MicroBatcher = app.state.batcher
        return {
            "status": "ok",
            "uptime_s": round(time.time() - started, 3),
            "queued_texts": batcher.pending(),
            "batches_run": batcher.batches,
        }

    @app.get("/model")
    async def model() -> dict[str, Any]:
        """The model card's facts (metadata, metrics), the calibration and the decision rule served."""
        card = read_json(predictor.files.card_data) if predictor.files.card_data.exists() else None
        return {
            "serving": predictor.describe(),
            "card": card,
            "limits": asdict(limits),
            "batching": asdict(batching),
        }

    original_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        document = original_openapi()
        document.setdefault("components", {}).setdefault("schemas", {}).update(definitions)
        return document

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def run_server(
    model_dir: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    calibrated: bool = True,
    cache_dir: Any = None,
    limits: Limits = Limits(),
    batching: Batching = Batching(),
) -> None:
    """Load the model, then serve it until SIGINT/SIGTERM (graceful: requests in flight are answered)."""
    import uvicorn

    predictor = Predictor(model_dir, calibrated=calibrated, cache_dir=cache_dir, batch_size=batching.max_batch)
    uvicorn.run(create_app(predictor, limits, batching), host=host, port=port, timeout_graceful_shutdown=30)
