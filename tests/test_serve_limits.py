"""mnist-serve's card and connection limits, over real HTTP on 127.0.0.1.

The app and the uvicorn options are mnist-serve's own (`create_app`, `server_config`), run in a thread
on a socket bound by `listen` as the command binds it. The model card is built by `build_card` from real
files and a real dvc.lock; no request here reaches the predictor, so no model is loaded.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn
import yaml

from mnist_pipeline.inference.serve import ModelCard, build_card, create_app, listen, server_config

PNG_A = b"\x89PNG\r\n\x1a\n the matrix of the model served"
PNG_B = b"\x89PNG\r\n\x1a\n the matrix of another model"


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def evaluated_project(root: Path) -> Path:
    """A project whose dvc.lock records a model and the evaluate stage's outputs for it."""
    (root / "models").mkdir(parents=True)
    (root / "metrics").mkdir()
    model = root / "models" / "model.onnx"
    model.write_bytes(b"model bytes")
    metrics = json.dumps({"accuracy": 0.9646}).encode()
    (root / "metrics" / "evaluate.json").write_bytes(metrics)
    (root / "metrics" / "confusion.png").write_bytes(PNG_A)
    lock = {"schema": "2.0", "stages": {
        "train": {"outs": [{"path": "models/model.onnx", "md5": md5(b"model bytes")}]},
        "evaluate": {"deps": [{"path": "models/model.onnx", "md5": md5(b"model bytes")}],
                     "outs": [{"path": "metrics/evaluate.json", "md5": md5(metrics)},
                              {"path": "metrics/confusion.png", "md5": md5(PNG_A)}]}}}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    return model


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def serving(card: ModelCard, host: str = "127.0.0.1",
            request_timeout_s: float = 20.0) -> Iterator[tuple[int, Recorder]]:
    """mnist-serve's app on a free port: its port, and what uvicorn logged."""
    sock = listen(host, 0)  # bound and listening: requests sent before uvicorn runs wait in the queue
    config = server_config(create_app(None, card), host, request_timeout_s)  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    config.load()
    recorder = Recorder()
    logging.getLogger("uvicorn.error").addHandler(recorder)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], recorder
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()
        logging.getLogger("uvicorn.error").removeHandler(recorder)


def get(port: int, path: str, host: str | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers={"Host": host} if host else {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_model_card_is_one_snapshot_taken_at_start_up(tmp_path: Path) -> None:
    """A rerun of evaluate after start-up rewrites confusion.png: the card still shows the served model's."""
    model = evaluated_project(tmp_path)
    card = build_card(model, tmp_path, "mnist", None)
    (tmp_path / "metrics" / "confusion.png").write_bytes(PNG_B)  # evaluate rerun for another model
    (tmp_path / "metrics" / "evaluate.json").unlink()
    with serving(card) as (port, _):
        status, body = get(port, "/card/confusion.png")
        assert (status, body) == (200, PNG_A)
        status, body = get(port, "/api/model")
        assert status == 200 and json.loads(body)["test_accuracy"] == 0.9646


def test_missing_card_file_gives_no_matrix_and_a_json_404_not_a_500(tmp_path: Path) -> None:
    model = evaluated_project(tmp_path)
    (tmp_path / "metrics" / "confusion.png").unlink()
    card = build_card(model, tmp_path, "mnist", None)
    with serving(card) as (port, recorder):
        status, body = get(port, "/api/model")
        assert json.loads(body)["confusion_matrix"] is None
        status, body = get(port, "/card/confusion.png")
        assert status == 404
        assert json.loads(body) == {
            "error": "GET /card/confusion.png: no confusion matrix recorded for this model in dvc.lock"}
    assert not [r for r in recorder.records if r.levelno >= logging.ERROR]


def errors_logged(recorder: Recorder) -> list[str]:
    return [r.getMessage() + (f" ({r.exc_info[0].__name__})" if r.exc_info and r.exc_info[0] else "")
            for r in recorder.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("sent", [
    pytest.param(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Ag", id="half-sent headers"),
    pytest.param(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                 b"Content-Length: 1000\r\n\r\n0123456789", id="10 of 1000 body bytes"),
])
def test_a_request_that_does_not_arrive_in_time_is_cut_off_without_a_traceback(tmp_path: Path, sent: bytes) -> None:
    """uvicorn alone held such a connection for 90 s (headers) or 120 s (body); the deadline here is 1 s."""
    card = build_card(evaluated_project(tmp_path), tmp_path, "mnist", None)
    with (serving(card, request_timeout_s=1.0) as (port, recorder),
          socket.create_connection(("127.0.0.1", port), timeout=30) as client):
        client.sendall(sent)
        assert client.recv(65536) == b""  # closed by the server, long before the socket's 30 s
    assert errors_logged(recorder) == []


def test_a_client_that_disconnects_mid_body_leaves_no_traceback(tmp_path: Path) -> None:
    card = build_card(evaluated_project(tmp_path), tmp_path, "mnist", None)
    with serving(card) as (port, recorder):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            client.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                           b"Content-Length: 1000\r\n\r\n0123456789")
        assert get(port, "/api/health")[0] == 200
    # The server's shutdown waits for the request's task, so its log is complete here.
    assert errors_logged(recorder) == []


@pytest.mark.parametrize(("host", "status"), [("evil.example", 421), ("evil.example:{port}", 421),
                                               ("127.0.0.1:{port}", 200), ("localhost:{port}", 200),
                                               ("[::1]:{port}", 200)])
def test_host_header_must_name_the_bound_address(tmp_path: Path, host: str, status: int) -> None:
    """DNS rebinding: a page of evil.example whose name now points at 127.0.0.1 still sends its own Host."""
    card = build_card(evaluated_project(tmp_path), tmp_path, "mnist", None)
    with serving(card) as (port, _):
        got, body = get(port, "/api/model", host=host.format(port=port))
    assert got == status
    if status == 421:
        assert json.loads(body)["error"] == (
            f"GET /api/model: Host '{host.format(port=port)}': expected one of 127.0.0.1, ::1, localhost (the address "
            "this server is bound to)")
