"""`mnist-serve`: draw a digit in the browser, or POST a picture, and see what the trained model makes of it.

One process, the model loaded once at start. Every picture goes through the same preparation as
`mnist-predict` (imageprep: MNIST's crop, 20-pixel box and centring) and the same scaling as the
preprocess stage, so the page can show the 28x28 image the model really saw. The page is static
files shipped in the package (web/static): it loads nothing from other hosts and works offline.

A fault at start (a missing or unloadable model, bad params) ends in one `error:` line and exit 2
before the server listens. A bad request gets a 4xx answer with one JSON line
`{"error": "..."}` and the server goes on serving.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import io
import ipaddress
import json
import socket
import sys
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import uvicorn
import yaml
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from mnist_pipeline.core.cli import run_command
from mnist_pipeline.core.config import flatten, load_config
from mnist_pipeline.core.datasets import DATASETS
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.core.files import NotRegularFile, md5_of, open_regular
from mnist_pipeline.inference.onnx_model import OnnxModel, load_model
from mnist_pipeline.inference.predict import (
    DEFAULT_MODEL,
    DEFAULT_PARAMS,
    MAX_PIXELS,
    check_trained_on,
    prepare_picture,
    record,
    settings,
)
from mnist_pipeline.sources.formats import FORMAT_NAMES, PICTURE_FORMATS
from mnist_pipeline.sources.splits import scale_images
from mnist_pipeline.train.registry import unread_keys

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# A drawing is a few kB and a phone photo a few MB; anything larger is refused unread.
MAX_BODY_BYTES = 8 * 1024 * 1024
# Pictures prepared at once: each may briefly hold a few copies of a MAX_PIXELS float image.
PREPARE_SLOTS = 2
TOP = 3
# On Ctrl-C or SIGTERM, requests in progress get this long to finish.
GRACE_S = 10
# A request's headers and body must arrive within this many seconds of the connection (or of the previous
# answer on it): a client that sends half its headers, or 10 of the 1,000 bytes it declared, is cut off
# rather than holding a connection for minutes. Idle keep-alive connections close sooner (uvicorn's 5 s).
REQUEST_TIMEOUT_S = 20.0
MULTIPART = "multipart/form-data"
UPLOAD_FIELD = "file"
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
# The evaluate stage's outputs the model card shows, when dvc.lock ties them to the served model.
METRICS_FILE = "evaluate.json"
CONFUSION_FILE = "confusion.png"


def snapshot(path: Path, limit: int = 64 << 20) -> tuple[bytes, str] | None:
    """A small output's bytes and their md5, read once: what the card shows is what was hashed, even when
    a rerun of a stage rewrites the file later. None when it is missing, not a regular file or too large."""
    try:
        with open_regular(path) as f:
            data = f.read(limit + 1)
    except (OSError, NotRegularFile):
        return None
    if len(data) > limit:
        return None
    return data, hashlib.md5(data, usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class ModelCard:
    """What the page says about the model: which file, trained how, and how well it did on the test set.

    Params and metrics come from dvc.lock only when dvc.lock records this very file (same md5):
    metrics of another model next to it would be a claim about the wrong network.
    """

    path: str
    md5: str
    dataset: str
    class_names: tuple[str, ...]
    locked_stage: str | None = None  # the dvc.lock stage that wrote this exact file
    params: dict[str, Any] = field(default_factory=dict)
    params_source: str | None = None
    test_accuracy: float | None = None
    metrics_source: str | None = None
    # The evaluate stage's picture as it was at start-up (read once, its md5 checked against dvc.lock).
    confusion_png: bytes | None = field(default=None, repr=False)

    def as_json(self) -> dict[str, Any]:
        return {
            "model": {"path": self.path, "md5": self.md5, "dvc_lock_stage": self.locked_stage},
            "dataset": self.dataset,
            "class_names": list(self.class_names),
            "params": self.params,
            "params_source": self.params_source,
            "test_accuracy": self.test_accuracy,
            "metrics_source": self.metrics_source,
            "confusion_matrix": "/card/confusion.png" if self.confusion_png else None,
        }


def _relative(path: Path, root: Path) -> str | None:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None


def _read_lock(root: Path) -> dict[str, Any]:
    """dvc.lock's stages, or none when the project has no (readable) lock file: the card then says less."""
    try:
        lock = yaml.safe_load((root / "dvc.lock").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    stages = lock.get("stages") if isinstance(lock, dict) else None
    return stages if isinstance(stages, dict) else {}


def _entries(stage: Any, kind: str) -> list[dict[str, Any]]:
    entries = stage.get(kind) if isinstance(stage, dict) else None
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def build_card(model_path: Path, root: Path, dataset: str, params_file: Path | None,
               class_names: tuple[str, ...] | None = None) -> ModelCard:
    """The model card, from the model file, dvc.lock, params and the evaluate stage's outputs in `root`;
    the class names are the IDX data set's unless given (a CSV model's, from its prepared data)."""
    md5 = md5_of(model_path)
    card: dict[str, Any] = {"path": str(model_path), "md5": md5, "dataset": dataset,
                            "class_names": class_names or DATASETS[dataset].class_names}
    stages = _read_lock(root)
    rel = _relative(model_path, root)
    for name, stage in stages.items():
        if any(o.get("path") == rel and o.get("md5") == md5 for o in _entries(stage, "outs")):
            card["locked_stage"] = name
            params = stage.get("params")
            recorded = params.get(DEFAULT_PARAMS) if isinstance(params, dict) else None
            card["params"] = train_params(flatten(recorded if isinstance(recorded, dict) else {}))
            card["params_source"] = f"dvc.lock, stage {name}"
        if any(d.get("path") == rel and d.get("md5") == md5 for d in _entries(stage, "deps")):
            for out in _entries(stage, "outs"):
                file = root / str(out.get("path", ""))
                if file.name not in (METRICS_FILE, CONFUSION_FILE):
                    continue
                read = snapshot(file)
                if read is None or read[1] != out.get("md5"):
                    continue  # missing, or changed since dvc.lock recorded it: not this model's numbers
                if file.name == METRICS_FILE:
                    accuracy = _accuracy(read[0])
                    if accuracy is not None:
                        card["test_accuracy"] = accuracy
                        card["metrics_source"] = f"{out['path']} (dvc.lock, stage {name})"
                else:
                    card["confusion_png"] = read[0]
    if "params_source" not in card and params_file is not None:
        cfg = load_config(params_file)
        card["params"] = train_params(flatten({"model": cfg.model.model_dump(), "train": cfg.train.model_dump()}))
        card["params_source"] = f"{params_file} (dvc.lock does not record this model)"
    return ModelCard(**card)


def _accuracy(data: bytes) -> float | None:
    """The test accuracy in the evaluate stage's metrics, if they hold one."""
    try:
        metrics = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    accuracy = metrics.get("accuracy") if isinstance(metrics, dict) else None
    return float(accuracy) if isinstance(accuracy, int | float) and not isinstance(accuracy, bool) else None


def train_params(flat: dict[str, Any]) -> dict[str, Any]:
    """The model and train keys, less those of the other model types (the registry's), which training never reads."""
    unread = unread_keys(flat.get("model.type"))
    return {k: v for k, v in flat.items() if k.startswith(("model.", "train.")) and k not in unread}


class Predictor:
    """The model, loaded once, behind a lock: one inference at a time."""

    def __init__(self, model: OnnxModel, scale: float, offset: float, class_names: tuple[str, ...], md5: str):
        self._model = model
        self.scale, self.offset = scale, offset
        self.class_names = class_names
        self.md5 = md5
        self._lock = threading.Lock()

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Class probabilities of one prepared (28, 28) uint8 image."""
        x = scale_images(image[None], self.scale, self.offset)
        with self._lock:
            return self._model.probabilities(x)[0].astype(np.float64)

    def __call__(self, data: bytes, name: str, file: str | None) -> dict[str, Any]:
        """mnist-predict's record of the picture (`file`: the upload's file name, None for a raw body), and
        what the page shows besides: every probability, the model's md5 and the 28x28 image it saw."""
        # mnist-predict's own preparation: the pixel limit checked from the header before decoding (an
        # over-limit JPEG decoded reduced), MNIST's recipe, and a warning per doubt about a photo.
        image, warnings = prepare_picture(io.BytesIO(data), name)
        row = self.probabilities(image)
        png = io.BytesIO()
        Image.fromarray(image).save(png, format="PNG")
        return {
            **record(file, row, self.class_names, TOP),
            "probabilities": [round(float(p), 6) for p in row],
            "class_names": list(self.class_names),
            "model_md5": self.md5,
            "image": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode("ascii"),
            "warnings": warnings,
        }


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


class BodyTooLarge(HTTPException):
    def __init__(self) -> None:
        super().__init__(413, f"request body over the limit of {MAX_BODY_BYTES:,} bytes")


class LimitBody:
    """Refuse a body over MAX_BODY_BYTES: by its Content-Length before reading it, else as it streams in."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            response = error_response(413, f"{scope['method']} {scope['path']}: request body of {int(declared):,} "
                                           f"bytes: over the limit of {MAX_BODY_BYTES:,} bytes")
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_BODY_BYTES:
                raise BodyTooLarge()
            return message

        try:
            await self.app(scope, counted, send)
        except ClientDisconnect:
            return  # the client went away mid-body (or was cut off as too slow): no one to answer, no fault


def host_of(header: str) -> str:
    """The name or address in a Host header, without its port: `[::1]:8000` -> `::1`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def allowed_hosts(host: str) -> frozenset[str] | None:
    """The Host header values a server bound to `host` answers: its own names and addresses, and for
    loopback `localhost`, 127.0.0.1 and ::1. None for a wildcard bind (0.0.0.0, ::), which any name reaches."""
    if host in ("", "0.0.0.0", "::"):
        return None
    names = {host.lower().strip("[]")}
    with contextlib.suppress(OSError):
        names |= {info[4][0].split("%")[0] for info in socket.getaddrinfo(host, None)}
    if is_loopback(host):
        names |= {"localhost", "127.0.0.1", "::1"}
    return frozenset(names)


class CheckHost:
    """Answer only requests addressed to this server: a web page on another site can point its own name at
    127.0.0.1 (DNS rebinding) and then read the API, but its requests still say `Host: that-site`."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str] | None) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.allowed is not None:
            header = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if header and host_of(header) not in self.allowed:
                response = error_response(421, f"{scope['method']} {scope['path']}: Host '{header[:80]}': expected "
                                               f"one of {', '.join(sorted(self.allowed))} (the address this "
                                               "server is bound to)")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class DeadlineProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request to arrive whole (REQUEST_TIMEOUT_S,
    or the config's `request_timeout_s`): uvicorn itself waits for half-sent headers or a slow body forever."""

    deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()  # the next request on this connection gets its own time

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        timeout = getattr(self.config, "request_timeout_s", REQUEST_TIMEOUT_S)
        self.deadline = self.loop.call_later(timeout, self._expired)

    def _expired(self) -> None:
        """Close unless the request in hand has arrived whole (its answer may still be computing)."""
        cycle = self.cycle
        arrived = cycle is not None and not cycle.response_complete and not cycle.more_body
        if not arrived and not self.transport.is_closing():
            self.transport.close()


def server_config(app: FastAPI, host: str, request_timeout_s: float = REQUEST_TIMEOUT_S) -> uvicorn.Config:
    """How mnist-serve runs `app` for a socket bound to `host`: body limit, Host check, request deadline."""
    config = uvicorn.Config(CheckHost(LimitBody(app), allowed_hosts(host)), http=DeadlineProtocol,
                            log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=GRACE_S)
    config.request_timeout_s = request_timeout_s  # type: ignore[attr-defined]
    return config


PICTURE_SCHEMA = {"schema": {"type": "string", "format": "binary"}}
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "description": f"A picture of one digit ({FORMAT_NAMES}, recognised by its bytes), at most "
                       f"{MAX_BODY_BYTES:,} bytes and {MAX_PIXELS:,} pixels: the raw bytes with any Content-Type "
                       f"(`curl --data-binary @digit.png`), or a form upload in the field '{UPLOAD_FIELD}'.",
        "content": {
            **{f"image/{kind.lower()}": PICTURE_SCHEMA for kind in PICTURE_FORMATS},
            "application/octet-stream": PICTURE_SCHEMA,
            MULTIPART: {"schema": {"type": "object", "required": [UPLOAD_FIELD],
                                   "properties": {UPLOAD_FIELD: {"type": "string", "format": "binary"}}}},
        },
    },
    "responses": {"200": {"description": "mnist-predict --json's record of the picture (file: the upload's "
                                         "name, null for a raw body), every probability and the 28x28 image "
                                         "the model saw (base64 PNG)",
                          "content": {"application/json": {"example": {
                              "file": None, "predicted": 7, "predicted_name": "7", "probability": 0.98,
                              "top": [{"class": 7, "name": "7", "probability": 0.98}],
                              "probabilities": [0.0] * 7 + [0.98] + [0.0] * 2,
                              "class_names": [str(d) for d in range(10)],
                              "model_md5": "<md5 of the model file>",
                              "image": "data:image/png;base64,...", "warnings": []}}}},
                  "4XX": {"description": 'A bad request, as one JSON line: {"error": "..."}'}},
}


def static_files() -> dict[str, tuple[bytes, str]]:
    """The page's files by name, read once: only these names are served, so no path can leave the folder."""
    folder = resources.files("mnist_pipeline.inference") / "web" / "static"
    files = {}
    for entry in folder.iterdir():
        suffix = Path(entry.name).suffix
        if entry.is_file() and suffix in STATIC_TYPES:
            files[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    return files


async def _upload_bytes(request: Request, content_type: str) -> tuple[bytes, str, str | None]:
    """The picture's bytes, the name errors call it by and its file name (None for a raw body), from a form
    upload or, whatever else the Content-Type says, the raw body: the bytes say what picture it is."""
    if content_type != MULTIPART:
        return await request.body(), "request body", None
    try:
        form = await request.form(max_files=1, max_fields=4)
    except (HTTPException, ClientDisconnect):
        raise
    except Exception as e:  # python-multipart's and Starlette's parse errors: all a malformed form
        raise HTTPException(400, f"malformed {MULTIPART} body ({type(e).__name__}: {e})") from None
    upload = form.get(UPLOAD_FIELD)
    if upload is None or isinstance(upload, str):
        raise HTTPException(422, f"{MULTIPART} body without a file in the field '{UPLOAD_FIELD}'")
    filename = upload.filename or ""
    return await upload.read(), f"upload '{filename[:80]}'", filename


def create_app(predictor: Predictor, card: ModelCard) -> FastAPI:
    """The web app: the page and its files, the model card, and the API."""
    # No /docs or /redoc: FastAPI's pages load Swagger UI and ReDoc from a CDN, blank offline, and no pinned
    # package ships those files. The OpenAPI description itself is served at /openapi.json.
    app = FastAPI(
        docs_url=None,
        redoc_url=None,
        title="mnist-serve",
        version="1",
        description=f"The trained {card.dataset} classifier (model md5 {card.md5}). The page at / draws digits; "
                    "POST /api/predict classifies a picture.",
    )
    files = static_files()
    slots = anyio.CapacityLimiter(PREPARE_SLOTS)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if exc.status_code != 404 or exc.detail != "Not Found" else "no such page or file"
        if exc.status_code == 405:
            detail = f"method {request.method} not allowed here"
        return error_response(exc.status_code, f"{request.method} {request.url.path}: {detail}")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"msg": "invalid request"}
        return error_response(422, f"{request.method} {request.url.path}: {first.get('msg')}")

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        content, media_type = files["index.html"]
        return Response(content, media_type=media_type)

    @app.get("/static/{name:path}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in files:
            raise HTTPException(404, f"no file '{name[:80]}' in the page's static files "
                                     f"(expected one of {', '.join(sorted(files))})")
        content, media_type = files[name]
        return Response(content, media_type=media_type, headers={"Cache-Control": "no-cache"})

    @app.get("/card/confusion.png", include_in_schema=False)
    async def confusion() -> Response:
        if card.confusion_png is None:
            raise HTTPException(404, "no confusion matrix recorded for this model in dvc.lock")
        return Response(card.confusion_png, media_type="image/png")

    @app.get("/api/health", summary="Liveness, and which model answers")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model_md5": card.md5, "dataset": card.dataset}

    @app.get("/api/model", summary="The model card: md5, train params, test accuracy")
    async def model_card() -> dict[str, Any]:
        return card.as_json()

    @app.post("/api/predict", summary="Classify one picture", openapi_extra=PREDICT_BODY,
              response_model=None)
    async def predict(request: Request) -> JSONResponse:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        data, name, file = await _upload_bytes(request, content_type)
        if not data:
            raise HTTPException(400, f"{name} is empty: expected the bytes of a picture ({FORMAT_NAMES})")
        try:
            result = await anyio.to_thread.run_sync(predictor, data, name, file, limiter=slots)
        except PipelineError as e:
            raise HTTPException(400, str(e)) from None
        return JSONResponse(result)

    return app


class QuietSignalServer(uvicorn.Server):
    """Ctrl-C or SIGTERM stop the server gracefully and end in exit 0: stopping a server is no fault."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.force_exit = self.should_exit  # a second Ctrl-C: stop without waiting for open connections
        self.should_exit = True


def listen(host: str, port: int) -> socket.socket:
    """Bind before uvicorn starts, so a busy port is one `error:` line and `--port 0` can name the port it got."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        raise PipelineError(f"{host}:{port}: cannot listen ({e.strerror or e})") from None
    return sock


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mnist-serve",
        description="Serve the trained model: a page to draw digits on, and an HTTP API (POST /api/predict).",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"trained ONNX model (default {DEFAULT_MODEL})")
    parser.add_argument("--params",
                        help=f"params file for data.dataset, preprocess scaling and the model card (default: "
                             f"{DEFAULT_PARAMS} when it exists, else MNIST's x/255 - 0.5)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT}; 0 = any free port, printed at start)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port}: expected 0 to 65535")
    return args


def is_loopback(host: str) -> bool:
    """Whether every address `host` stands for is this machine's own (127.0.0.1, ::1, localhost)."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def serve(args: argparse.Namespace) -> None:
    how = settings(args.params, None)
    dataset, scale, offset = how.dataset, how.scale, how.offset
    if how.folder is not None:
        raise PipelineError(f"{args.params or DEFAULT_PARAMS}: data.dataset = folder: mnist-serve's page draws digits "
                            "for an MNIST or Fashion-MNIST model; classify pictures for a folder model with "
                            "mnist-predict PICTURE...")
    params_file = Path(args.params or DEFAULT_PARAMS)
    model_path = Path(args.model)
    if not model_path.is_file():
        raise PipelineError(f"{model_path}: model file not found (train it with `dvc repro`, or pass --model PATH)")
    if params_file.is_file():
        check_trained_on(model_path, params_file, dataset)
    try:
        card = build_card(model_path, params_file.parent, dataset, params_file if params_file.is_file() else None,
                          how.spec.class_names)
    except OSError as e:
        raise PipelineError(f"{model_path}: cannot read ({e.strerror or e})") from None
    if not is_loopback(args.host):
        print(f"mnist-serve: warning: --host {args.host} serves the model to every machine that can reach this "
              "one (the default, 127.0.0.1, serves this machine only)", file=sys.stderr, flush=True)
    # Bound before the model loads: a busy port fails at once, and early requests wait in the queue.
    sock = listen(args.host, args.port)
    with sock:
        spec = how.spec
        model = load_model(model_path, spec.n_pixels, spec.n_classes)
        if (loaded := md5_of(model_path)) != card.md5:  # rewritten by a training run meanwhile
            raise PipelineError(f"{model_path}: changed while mnist-serve started (md5 {card.md5}, now {loaded}): "
                                "start it again once training has written the model")
        predictor = Predictor(model, scale, offset, spec.class_names, card.md5)
        predictor.probabilities(np.zeros((28, 28), np.uint8))  # the first run allocates its buffers: no user waits
        app = create_app(predictor, card)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"mnist-serve: http://{shown}:{port}/ (model {model_path}, md5 {card.md5}, {dataset}); "
              "API description at /openapi.json; Ctrl-C stops", flush=True)
        QuietSignalServer(server_config(app, args.host)).run(sockets=[sock])


def main(argv: list[str] | None = None) -> None:
    """Console entry point: serve until stopped; a fault at start is one `error:` line and exit 2."""
    args = parse_args(argv)
    run_command(lambda: serve(args))


if __name__ == "__main__":
    main()

