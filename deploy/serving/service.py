"""PaddleX's image-classification API over ppcls's Predictor; deploy/serving/serve.py runs it.

    POST /image-classification
        {"image": <the image file in base64, or an http(s) URL when the service allows URLs>,
         "topk": k,                            (PaddleX 3.x; optional)
         "inferenceParams": {"topK": k},       (PaddleX 3.0 beta's form; optional)
         "visualize": false | null}            (optional; no visualisation image is made)
    200 {"logId": ..., "errorCode": 0, "errorMsg": "Success",
         "result": {"categories": [{"id": 3, "name": "digit 3", "score": 0.98}, ...]}}
    GET /health
    200 {"logId": ..., "errorCode": 0, "errorMsg": "Healthy"}

An error is {"logId", "errorCode": <the HTTP status>, "errorMsg": <one line>} with that
status: 422 for a request or an image that cannot be used (PaddleX answers validation
errors with 422), 413 for a body over the limit, 408 for a body that does not arrive in
time, 503 when the queue is full, 404/405 for another path or method, 500 for a failure
of ours. The categories are the Predictor's answer (the same as deploy/python/predict_cls.py's
class_ids, label_names and scores); without labels a name is the class id.

How requests flow, and what bounds each step:
- the event loop (uvicorn) admits at most `max_queue` classification requests at once,
  counted from their headers to their answer; one more gets 503 at once, unread;
- the body is read up to `max_body` bytes (Content-Length over it: 413 unread) within
  `body_timeout` seconds;
- base64 decoding and preprocessing (Predictor.prepare, with the pixel cap) run in a pool
  of one thread per core; image URLs are fetched in a pool of their own (image_urls.py);
- `workers` threads, each with its own Predictor, take the prepared images that are
  waiting, up to `max_batch` of one size at a time (a batch forms only while a worker is
  busy, so a lone request waits for nobody).
"""

import asyncio
import base64
import binascii
import collections
import concurrent.futures
import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError
from starlette.exceptions import HTTPException

from image_urls import ImageURLError, fetch_image, looks_like_url
from ppcls.inference import EngineFailure, describe_error
from ppcls.utils import logger
from ppcls.utils.errors import shown

INFER_PATH = "/image-classification"
HEALTH_PATH = "/health"


@dataclass
class Limits:
    """What serve.py's flags set; see the module's docstring."""
    max_queue: int = 64
    max_body: int = 16 * 2**20
    body_timeout: float = 30.0
    workers: int = 1
    max_batch: int = 1
    allow_image_urls: bool = False
    url_timeout: float = 10.0
    url_max_bytes: int = 12 * 2**20


# ------------------------------------------------------------------- the request schema
class InferenceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    topK: Optional[StrictInt] = None


class InferRequest(BaseModel):
    """PaddleX's image-classification request (3.x and 3.0 beta forms). A field we do not
    know is refused by name rather than ignored."""
    model_config = ConfigDict(extra="forbid")
    image: StrictStr = Field(description="the image file in base64, or an http(s) URL")
    topk: Optional[StrictInt] = None
    inferenceParams: Optional[InferenceParams] = None
    visualize: Optional[StrictBool] = None


class RequestError(Exception):
    """A request we answer with `status` and a one-line message."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def validation_message(error):
    """pydantic's errors as one line: 'image: Field required; topk: ...'."""
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(part) for part in item.get("loc", ()))
        if item.get("type") == "json_invalid":
            return f"the request body is not JSON ({item.get('ctx', {}).get('error', item['msg'])})"
        parts.append(f"{where}: {item['msg']}" if where else
                     f"the request body must be a JSON object ({item['msg']})")
    return "; ".join(parts)


# --------------------------------------------------------------------------- the batcher
class Batcher:
    """Worker threads, each with its own Predictor, running the prepared images waiting in
    arrival order, up to `max_batch` of one shape at a time. `submit` is called on the event
    loop and returns a future of the image's probabilities (or its EngineFailure)."""

    def __init__(self, predictors, max_batch):
        self.max_batch = max_batch
        self.pending = collections.deque()  # (image, future, loop)
        self.ready = threading.Condition()
        self.closing = False
        self.threads = [threading.Thread(target=self._work, args=(p,), name=f"predictor-{i}", daemon=True)
                        for i, p in enumerate(predictors)]
        for thread in self.threads:
            thread.start()

    def submit(self, image):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self.ready:
            self.pending.append((image, future, loop))
            self.ready.notify()
        return future

    def close(self):
        """Lets the workers finish what is waiting, then stop."""
        with self.ready:
            self.closing = True
            self.ready.notify_all()
        for thread in self.threads:
            thread.join()

    def _next_batch(self):
        with self.ready:
            while not self.pending and not self.closing:
                self.ready.wait()
            if not self.pending:
                return None
            batch, others = [self.pending.popleft()], []
            while self.pending and len(batch) < self.max_batch:
                item = self.pending.popleft()
                (batch if item[0].shape == batch[0][0].shape else others).append(item)
            self.pending.extendleft(reversed(others))
            return batch

    def _work(self, predictor):
        while (batch := self._next_batch()) is not None:
            try:
                answers = predictor.run([image for image, _, _ in batch])
            except Exception as err:  # noqa: BLE001 - a bug of ours must not kill the worker
                answers = [EngineFailure(f"{type(err).__name__}: {err}")] * len(batch)
            for (_, future, loop), answer in zip(batch, answers):
                loop.call_soon_threadsafe(_resolve, future, answer)


def _resolve(future, answer):
    if not future.done():  # cancelled when its client went away
        future.set_result(answer)


# --------------------------------------------------------------------------- the service
class Service:
    """The predictors, pools and limits behind the app."""

    def __init__(self, predictors, limits, cores):
        self.predictor, self.limits = predictors[0], limits
        self.class_num = min(p.class_num for p in predictors)  # each runs once: warm when the port opens
        self.top_k_default = self.predictor.top_k_step.topk if self.predictor.top_k_step else None
        self.batcher = Batcher(predictors, limits.max_batch)
        self.prepare_pool = concurrent.futures.ThreadPoolExecutor(cores, thread_name_prefix="prepare")
        self.url_pool = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="image-url")
        self.in_flight = 0

    def close(self):
        self.batcher.close()
        self.prepare_pool.shutdown()
        self.url_pool.shutdown(cancel_futures=True)

    async def classify(self, body):
        request = self.parse(body)
        topk = self.requested_topk(request)
        loop = asyncio.get_running_loop()
        if looks_like_url(request.image):
            data = await loop.run_in_executor(self.url_pool, self.fetch, request.image)
            image = await loop.run_in_executor(self.prepare_pool, self.prepare, data)
        else:
            image = await loop.run_in_executor(self.prepare_pool, self.decode_and_prepare, request.image)
        answer = await self.batcher.submit(image)
        if isinstance(answer, EngineFailure):
            raise RequestError(500, str(answer))
        result = self.predictor.postprocess(answer, topk)
        names = result.get("label_names") or [str(i) for i in result["class_ids"]]
        return {"categories": [{"id": i, "name": name or str(i), "score": score}
                               for i, name, score in zip(result["class_ids"], names, result["scores"])]}

    @staticmethod
    def parse(body):
        try:
            return InferRequest.model_validate_json(body)
        except ValidationError as err:
            raise RequestError(422, validation_message(err)) from None

    def requested_topk(self, request):
        if request.visualize:
            raise RequestError(422, "visualize: this service returns no visualisation image; send "
                                    "false or leave it out")
        ks = {k for k in (request.topk, request.inferenceParams and request.inferenceParams.topK)
              if k is not None}
        if len(ks) > 1:
            raise RequestError(422, "topk and inferenceParams.topK differ: send one of them")
        if not ks:
            return None
        k = ks.pop()
        if self.top_k_default is None:
            raise RequestError(422, "topk: this model's PostProcess answers with one class "
                                    "(ThreshOutput), not a top-k list")
        if not 1 <= k <= self.class_num:
            raise RequestError(422, f"topk must be from 1 to {self.class_num} (the model's classes), "
                                    f"got {shown(k)}")
        return k

    def fetch(self, url):
        if not self.limits.allow_image_urls:
            raise RequestError(422, "image: URLs are not enabled on this service (serve.py "
                                    "--allow_image_urls enables http(s) URLs); send the image file "
                                    "in base64")
        try:
            return fetch_image(url, self.limits.url_max_bytes, self.limits.url_timeout)
        except ImageURLError as err:
            raise RequestError(422, f"image: {err}") from None

    def decode_and_prepare(self, text):
        try:
            data = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(422, "image: neither base64 nor a URL; send the image file in "
                                    "base64") from None
        return self.prepare(data)

    def prepare(self, data):
        try:
            return self.predictor.prepare(data)
        except (ValueError, OSError) as err:
            raise RequestError(422, f"image: {describe_error(err)}") from None


def response(log_id, status, message, result=None):
    body = {"logId": log_id, "errorCode": 0 if status == 200 else status, "errorMsg": message}
    if result is not None:
        body["result"] = result
    return body


def create_app(service):
    """The FastAPI app, wrapped in the admission, size and logging middleware."""
    app = FastAPI(title="MnasNet image classification (PaddleX's API)", docs_url="/docs",
                  redoc_url=None)

    @app.post(INFER_PATH, operation_id="infer", openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": InferRequest.model_json_schema()}}}})
    async def infer(request: Request):
        log_id = request.scope["state"]["log_id"]
        try:
            result = await service.classify(await request.body())
        except RequestError as err:
            request.scope["state"]["error"] = str(err)
            return JSONResponse(response(log_id, err.status, str(err)), status_code=err.status)
        return response(log_id, 200, "Success", result)

    @app.get(HEALTH_PATH, operation_id="checkHealth")
    async def health(request: Request):
        return response(request.scope["state"]["log_id"], 200, "Healthy")

    @app.exception_handler(HTTPException)
    async def http_error(request, err):
        request.scope["state"]["error"] = str(err.detail)
        return JSONResponse(response(request.scope["state"]["log_id"], err.status_code, str(err.detail)),
                            status_code=err.status_code, headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request, err):
        logger.error(f"request {request.scope['state']['log_id']}: {type(err).__name__}: {err}")
        return JSONResponse(response(request.scope["state"]["log_id"], 500, "internal server error"),
                            status_code=500)

    return Admission(app, service)


class Admission:
    """ASGI middleware: a log id and one log line with the latency for every request; the
    bounded queue (503), the body size limit (413) and the body deadline (408)."""

    def __init__(self, app, service):
        self.app, self.service, self.limits = app, service, service.limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, log_id = time.perf_counter(), uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["log_id"] = log_id
        status = []

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        counted = scope["method"] == "POST" and scope["path"] == INFER_PATH
        try:
            refusal = self.refusal(scope, counted)
            if refusal:
                state["error"] = refusal[1]
                return await send_json(send_and_note, refusal[0], response(log_id, *refusal))
            if counted:
                self.service.in_flight += 1
            try:
                await self.app(scope, self.bounded(receive), send_and_note)
            finally:
                if counted:
                    self.service.in_flight -= 1
        finally:
            client = scope.get("client") or ("-", 0)
            error = f" ({state['error']})" if state.get("error") else ""
            logger.info(f"{client[0]} {scope['method']} {scope['path']} {status[0] if status else '-'} "
                        f"{(time.perf_counter() - start) * 1000:.1f} ms logId={log_id}{error}")

    def refusal(self, scope, counted):
        """(status, message) for a request refused before its body is read, or None."""
        if counted and self.service.in_flight >= self.limits.max_queue:
            return 503, (f"busy: {self.limits.max_queue} requests are already queued; retry later")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limits.max_body):
            return 413, self.too_large()
        return None

    def too_large(self):
        return (f"the request body is over this service's limit of {self.limits.max_body} bytes "
                "(serve.py --max_body_mb)")

    def bounded(self, receive):
        """`receive` that stops a body at max_body bytes (413) or at the deadline (408)."""
        deadline, received, done = time.monotonic() + self.limits.body_timeout, 0, False

        async def receive_bounded():
            nonlocal received, done
            if done:
                return await receive()  # after the body: a disconnect, whenever it comes
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise HTTPException(408, f"the request body did not arrive within "
                                         f"{self.limits.body_timeout:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limits.max_body:
                    raise HTTPException(413, self.too_large(), headers={"Connection": "close"})
                done = not message.get("more_body", False)
            return message

        return receive_bounded


async def send_json(send, status, body):
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": data})
