"""mnist-serve's HTTP API, over real HTTP on 127.0.0.1 against `mnist-serve` run as a subprocess.

The model is the real pipeline's, trained on real MNIST (servekit.trained_project). Every bad
request must get a 4xx answer that is one JSON line naming what was wrong, and the server must
go on serving; a fault at start must stop the command with one `error:` line before it listens.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import socket
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import yaml
from PIL import Image
from servekit import Served, error_line, run_serve, serving, trained_project
from test_imageprep import mnist_test

from mnist_pipeline.core.datasets import DATASETS
from mnist_pipeline.inference.imageprep import prepare_file
from mnist_pipeline.inference.predict import MAX_PIXELS
from mnist_pipeline.inference.serve import MAX_BODY_BYTES


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, mirror_root: Path) -> Path:
    return trained_project(tmp_path_factory, mirror_root)


@pytest.fixture(scope="module")
def server(project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(project, log_dir=tmp_path_factory.mktemp("serve-api")) as served:
        yield served


def request(served: Served, method: str, path: str, body: Any = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection, the path sent exactly as given (no client-side normalising)."""
    url = urlsplit(served.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {},
                           encode_chunked=body is not None and not isinstance(body, bytes))
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def post_png(served: Served, data: bytes) -> tuple[int, dict[str, Any]]:
    status, _, body = request(served, "POST", "/api/predict", data, {"Content-Type": "image/png"})
    return status, json.loads(body)


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes that declares width x height pixels: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def multipart(field: str, filename: str, data: bytes, content_type: str = "image/png") -> tuple[bytes, str]:
    boundary = "----mnist-serve-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def decoded_image(answer: dict[str, Any]) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert answer["image"].startswith(prefix)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["image"][len(prefix):]))))


@pytest.mark.slow
def test_predict_raw_png_gives_class_probabilities_md5_and_the_image_mnist_predict_prepares(
    server: Served, project: Path, mirror_root: Path, tmp_path: Path
) -> None:
    images, labels = mnist_test(mirror_root, 10)
    assert labels[0] == 7
    picture = tmp_path / "seven.png"
    Image.fromarray(255 - images[0]).resize((140, 140), Image.Resampling.BICUBIC).save(picture)
    status, answer = post_png(server, picture.read_bytes())
    assert status == 200, answer
    assert (answer["file"], answer["predicted"], answer["predicted_name"]) == (None, 7, "7")
    assert [t["class"] for t in answer["top"]][:1] == [7] and len(answer["top"]) == 3
    assert len(answer["probabilities"]) == 10 and abs(sum(answer["probabilities"]) - 1) < 1e-3
    assert answer["probability"] == max(answer["probabilities"])
    assert answer["class_names"] == [str(d) for d in range(10)]
    assert answer["warnings"] == []  # a clean drawing: no doubt about the background
    model_md5 = hashlib.md5((project / "models" / "model.onnx").read_bytes()).hexdigest()
    assert answer["model_md5"] == model_md5
    # The 28x28 image the page shows is exactly what mnist-predict's preparation makes of the file.
    np.testing.assert_array_equal(decoded_image(answer), prepare_file(picture))


@pytest.mark.slow
def test_predict_recognises_real_test_digits_from_raw_and_form_uploads(server: Served, mirror_root: Path) -> None:
    images, labels = mnist_test(mirror_root, 20)
    raw = [post_png(server, png_bytes(image)) for image in images]
    assert all(status == 200 for status, _ in raw), raw
    predicted = np.array([answer["predicted"] for _, answer in raw])
    assert np.mean(predicted == labels) >= 0.8, (predicted, labels)  # the model scores 0.88 on the test set

    body, content_type = multipart("file", "digit.png", png_bytes(images[3]))
    status, _, reply = request(server, "POST", "/api/predict", body, {"Content-Type": content_type})
    assert status == 200, reply
    assert json.loads(reply)["probabilities"] == raw[3][1]["probabilities"]
    assert json.loads(reply)["file"] == "digit.png"


@pytest.mark.slow
def test_jpeg_over_the_pixel_limit_is_decoded_reduced_as_mnist_predict_does(server: Served, mirror_root: Path) -> None:
    images, labels = mnist_test(mirror_root, 1)
    page = Image.new("L", (4200, 3000), 255)  # 12.6 megapixels: over MAX_PIXELS
    page.paste(Image.fromarray(255 - images[0]).resize((1400, 1400), Image.Resampling.BICUBIC), (1400, 800))
    buffer = io.BytesIO()
    page.save(buffer, format="JPEG", quality=90)
    status, _, reply = request(server, "POST", "/api/predict", buffer.getvalue(), {"Content-Type": "image/jpeg"})
    assert status == 200, reply
    assert json.loads(reply)["predicted"] == labels[0] == 7


@pytest.mark.slow
def test_health_and_model_card_name_the_model_dvc_lock_records(server: Served, project: Path) -> None:
    status, _, body = request(server, "GET", "/api/health")
    assert status == 200 and json.loads(body)["status"] == "ok"

    status, _, body = request(server, "GET", "/api/model")
    assert status == 200
    card = json.loads(body)
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    locked = next(o for o in lock["train"]["outs"] if o["path"] == "models/model.onnx")
    assert card["model"] == {"path": "models/model.onnx", "md5": locked["md5"], "dvc_lock_stage": "train"}
    evaluated = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert card["test_accuracy"] == evaluated["accuracy"]
    assert card["params"]["train.epochs"] == 5 and card["params"]["model.hidden"] == [64, 64]
    assert not [k for k in card["params"] if k.startswith("model.cnn.")]  # an MLP never reads them
    assert card["dataset"] == "mnist"

    status, headers, png = request(server, "GET", card["confusion_matrix"])
    assert status == 200 and headers["content-type"] == "image/png"
    assert png == (project / "metrics" / "confusion.png").read_bytes()


@pytest.mark.slow
def test_page_and_its_files_are_served_from_the_package(server: Served) -> None:
    status, headers, page = request(server, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    texts = [page]
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset.encode() in page
        status, _, text = request(server, "GET", asset)
        assert status == 200, asset
        texts.append(text)
    # Offline: no script, style or font from another host (and no @import or url() to one).
    assert not [t for t in texts if b"http://" in t or b"https://" in t or b"//cdn" in t]
    status, _, spec = request(server, "GET", "/openapi.json")
    assert "image/png" in json.loads(spec)["paths"]["/api/predict"]["post"]["requestBody"]["content"]


@pytest.mark.slow
def test_no_api_page_that_needs_a_cdn_the_openapi_description_is_served(server: Served) -> None:
    """FastAPI's /docs and /redoc pages fetch Swagger UI and ReDoc from a CDN: blank offline, so not served."""
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        status, headers, reply = request(server, "GET", path)
        assert status == 404 and headers["content-type"] == "application/json", (path, reply)
        assert b"cdn" not in reply.lower() and b"https://" not in reply
    status, headers, spec = request(server, "GET", "/openapi.json")
    assert status == 200 and headers["content-type"] == "application/json"
    content = json.loads(spec)["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert {"application/octet-stream", "image/webp", "multipart/form-data"} <= set(content)


def blank_png() -> bytes:
    return png_bytes(Image.new("RGB", (64, 48), (255, 255, 255)))


def truncated_png() -> bytes:
    data = png_bytes(np.random.default_rng(0).integers(0, 256, (200, 200), dtype=np.uint8))
    return data[: len(data) // 2]


def chunks_over_the_limit() -> Iterator[bytes]:
    """A body sent chunked, without Content-Length: the server only learns its size by reading it."""
    for _ in range(MAX_BODY_BYTES // (1 << 20) + 1):
        yield b"\0" * (1 << 20)


# name -> (method, path, headers, body (or a function making it), status, words the one-line error must hold)
BAD_REQUESTS: dict[str, tuple[str, str, dict[str, str], Any, int, str]] = {
    "not an image": ("POST", "/api/predict", {"Content-Type": "image/png"}, b"hello, I am text", 400,
                     "request body: not an image (expected PNG, JPEG, BMP, TIFF, GIF or WEBP)"),
    "not an image, octet-stream": ("POST", "/api/predict", {"Content-Type": "application/octet-stream"},
                                   b"RIFF\x10\0\0\0WEBPVP8 " + bytes(10), 400, "request body: unreadable image"),
    "not an image, as curl posts it": ("POST", "/api/predict",
                                       {"Content-Type": "application/x-www-form-urlencoded"}, b"digit=7", 400,
                                       "request body: not an image"),
    "truncated png": ("POST", "/api/predict", {"Content-Type": "image/png"}, truncated_png(), 400,
                      "unreadable image"),
    "blank picture": ("POST", "/api/predict", {"Content-Type": "image/png"}, blank_png(), 400, "blank image"),
    "empty body": ("POST", "/api/predict", {"Content-Type": "image/png"}, b"", 400, "request body is empty"),
    "body over the limit, declared": ("POST", "/api/predict", {"Content-Type": "image/png"},
                                      b"\0" * (MAX_BODY_BYTES + 1), 413, f"over the limit of {MAX_BODY_BYTES:,}"),
    "body over the limit, chunked": ("POST", "/api/predict", {"Content-Type": "image/png"},
                                     chunks_over_the_limit, 413,
                                     f"over the limit of {MAX_BODY_BYTES:,}"),
    "pixels over the limit": ("POST", "/api/predict", {"Content-Type": "image/png"}, png_header_only(6000, 6000),
                              400, f"6000x6000 pixels: expected at most {MAX_PIXELS:,} pixels"),
    "decompression bomb": ("POST", "/api/predict", {"Content-Type": "image/png"}, png_header_only(100_000, 100_000),
                           400, "refused: Image size (10000000000 pixels) exceeds limit"),
    "json, not a picture": ("POST", "/api/predict", {"Content-Type": "application/json"}, b'{"image": 1}', 400,
                            "request body: not an image"),
    "no content type, a blank picture": ("POST", "/api/predict", {}, blank_png(), 400, "blank image"),
    "form without the file field": ("POST", "/api/predict", {"Content-Type": multipart("picture", "a.png", b"x")[1]},
                                    multipart("picture", "a.png", b"x")[0], 422, "without a file in the field 'file'"),
    "form upload not an image": ("POST", "/api/predict", {"Content-Type": multipart("file", "a.png", b"x")[1]},
                                 multipart("file", "a.png", b"x")[0], 400, "upload 'a.png': not an image"),
    "path traversal": ("GET", "/static/../../../../etc/passwd", {}, None, 404, "no file '../../../../etc/passwd'"),
    "path traversal, encoded": ("GET", "/static/%2e%2e%2f%2e%2e%2fserve.py", {}, None, 404, "no file '../../serve.py'"),
    "traversal to the package": ("GET", "/static/../../serve.py", {}, None, 404, "in the page's static files"),
    "unknown page": ("GET", "/admin", {}, None, 404, "GET /admin: no such page or file"),
    "wrong method": ("GET", "/api/predict", {}, None, 405, "method GET not allowed"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_request_gets_one_json_error_line_and_the_server_keeps_serving(server: Served, case: str) -> None:
    method, path, headers, body, expected_status, words = BAD_REQUESTS[case]
    body = body() if callable(body) else body
    status, reply_headers, reply = request(server, method, path, body, headers)
    assert status == expected_status, reply
    assert reply_headers["content-type"] == "application/json"
    assert reply.count(b"\n") == 0
    answer = json.loads(reply)
    assert list(answer) == ["error"] and words in answer["error"], answer
    assert server.process.poll() is None
    status, _, _ = request(server, "GET", "/api/health")
    assert status == 200


def test_missing_model_stops_at_start_with_one_error_line(tmp_path: Path) -> None:
    result = run_serve(tmp_path, "--model", "models/missing.onnx", "--port", "0")
    assert error_line(result) == ("error: models/missing.onnx: model file not found (train it with `dvc repro`, "
                                  "or pass --model PATH)")
    assert result.stderr.count("\n") == 1  # refused before the model loads


def test_unreadable_model_stops_at_start_with_one_error_line(tmp_path: Path) -> None:
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"\x08\x08\x12\x0emnist_pipeline the first bytes of an ONNX file, and no more")
    result = run_serve(tmp_path, "--model", str(broken), "--port", "0")
    assert error_line(result).startswith(f"error: {broken}: not a loadable ONNX model")


def test_params_path_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"never read: the params come first")
    result = run_serve(tmp_path, "--params", "nowhere/params.yaml", "--model", "model.onnx", "--port", "0")
    line = error_line(result)
    assert line.startswith("error: nowhere/params.yaml: file not found"), line


def test_other_host_warns_and_a_busy_port_is_one_error_line(tmp_path: Path) -> None:
    # The port is taken before the model loads: a file that is only there is enough to get that far.
    (tmp_path / "model.onnx").write_bytes(b"not loaded before the port is bound")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_serve(tmp_path, "--host", "0.0.0.0", "--port", str(port), "--model", "model.onnx")
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("mnist-serve: warning: --host 0.0.0.0 serves the model"), lines
    assert error_line(result) == f"error: 0.0.0.0:{port}: cannot listen (Address already in use)"


@pytest.mark.slow
def test_class_names_and_card_follow_the_params_data_set(project: Path, tmp_path: Path, mirror_root: Path) -> None:
    """A Fashion-MNIST params file: the answers name clothes ('Sneaker', not 7); no dvc.lock there, so the
    card takes its params from that file and claims no test accuracy."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["dataset"] = "fashion_mnist"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    model = project / "models" / "model.onnx"
    with serving(tmp_path, "--params", str(tmp_path / "params.yaml"), "--model", str(model),
                 log_dir=tmp_path) as fashion:
        status, answer = post_png(fashion, png_bytes(mnist_test(mirror_root, 1)[0][0]))
        _, _, body = request(fashion, "GET", "/api/model")
    names = DATASETS["fashion_mnist"].class_names
    assert status == 200 and answer["class_names"] == list(names) and names[7] == "Sneaker"
    assert answer["predicted_name"] == names[answer["predicted"]]
    card = json.loads(body)
    assert card["dataset"] == "fashion_mnist" and card["model"]["dvc_lock_stage"] is None
    assert card["test_accuracy"] is None and card["confusion_matrix"] is None
    assert card["params_source"].startswith(str(tmp_path / "params.yaml"))
    assert card["params"]["train.epochs"] == 5
