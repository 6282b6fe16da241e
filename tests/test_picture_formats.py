"""One way in for pictures: every format folder data sets read (sources/formats.py) is read by `mnist-predict`
and by `mnist-serve`, recognised by its bytes; a directory stands for exactly the files one could name.

The model is the one the mnist-serve tests train (servekit.trained_project: the real pipeline on real MNIST);
both commands run as a user runs them, the server over real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from conftest import subprocess_env
from PIL import Image
from servekit import Served, serving, trained_project
from test_imageprep import mnist_test

from mnist_pipeline.sources.formats import PICTURE_FORMATS

# The same picture in each format, and the fields `mnist-predict --json` gives each picture.
RECORD_FIELDS = ["file", "predicted", "predicted_name", "probability", "top"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, mirror_root: Path) -> Path:
    return trained_project(tmp_path_factory, mirror_root)


@pytest.fixture(scope="module")
def server(project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(project, log_dir=tmp_path_factory.mktemp("serve-formats")) as served:
        yield served


@pytest.fixture(scope="module")
def pictures(mirror_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """MNIST's first test digit (a 7), drawn dark on light at 140x140, once in every format."""
    images, labels = mnist_test(mirror_root, 1)
    assert labels[0] == 7
    picture = Image.fromarray(255 - images[0]).resize((140, 140), Image.Resampling.BICUBIC)
    folder = tmp_path_factory.mktemp("formats")
    paths = []
    for kind, suffixes in PICTURE_FORMATS.items():
        path = folder / f"seven{suffixes[0]}"
        picture.save(path, format=kind)
        paths.append(path)
    return paths


def predict_json(*args: str, cwd: Path) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-m", "mnist_pipeline.inference.predict", "--json", *args],
                            cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def post(served: Served, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    url = urlsplit(served.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        connection.request("POST", "/api/predict", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def multipart(filename: str, data: bytes) -> tuple[bytes, dict[str, str]]:
    boundary = "----picture-formats-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def same_record(answer: dict[str, Any], record: dict[str, Any]) -> None:
    """The API's answer holds mnist-predict's record: the same fields, classes and names; probabilities
    equal to within float32 rounding (mnist-serve calls the model as a graph, mnist-predict via predict)."""
    assert list(answer)[: len(RECORD_FIELDS)] == RECORD_FIELDS == list(record)
    assert answer["predicted"] == record["predicted"] and answer["predicted_name"] == record["predicted_name"]
    assert [t["class"] for t in answer["top"]] == [t["class"] for t in record["top"]]
    assert [t["name"] for t in answer["top"]] == [t["name"] for t in record["top"]]
    np.testing.assert_allclose([t["probability"] for t in answer["top"]],
                               [t["probability"] for t in record["top"]], atol=1e-4)


@pytest.mark.slow
def test_every_format_is_read_by_mnist_predict_and_by_the_api_whatever_the_content_type(
    project: Path, server: Served, pictures: list[Path]
) -> None:
    report = predict_json(*map(str, pictures), cwd=project)
    assert report["errors"] == []
    records = report["predictions"]
    assert [r["file"] for r in records] == [str(p) for p in pictures]
    assert [r["predicted"] for r in records] == [7] * len(PICTURE_FORMATS)
    for picture, record in zip(pictures, records, strict=True):
        data = picture.read_bytes()
        # Raw bytes: as image/png would say (even when wrong), octet-stream, curl's default and no type at all.
        for content_type in ("image/png", "application/octet-stream", "application/x-www-form-urlencoded", None):
            status, answer = post(server, data, {"Content-Type": content_type} if content_type else {})
            assert status == 200, (picture.name, content_type, answer)
            assert answer["file"] is None
            same_record(answer, {**record, "file": None})
        status, answer = post(server, *multipart(picture.name, data))
        assert status == 200, (picture.name, answer)
        same_record(answer, {**record, "file": picture.name})
        assert answer["file"] == picture.name


@pytest.mark.slow
def test_a_directory_gives_the_same_records_as_naming_its_pictures_one_by_one(
    project: Path, pictures: list[Path], tmp_path: Path
) -> None:
    folder = tmp_path / "digits"
    folder.mkdir()
    for picture in pictures:
        (folder / picture.name).write_bytes(picture.read_bytes())
    (folder / "UPPER.PNG").write_bytes(pictures[0].read_bytes())
    # Not taken from the directory: a hidden name, a name with no picture suffix, a folder.
    (folder / ".hidden.png").write_bytes(pictures[0].read_bytes())
    (folder / "seven.dat").write_bytes(pictures[0].read_bytes())
    (folder / "notes.txt").write_text("not a picture")
    (folder / "sub.png").mkdir()
    whole = predict_json(str(folder), cwd=project)
    listed = sorted(["UPPER.PNG", *(p.name for p in pictures)])
    assert [r["file"] for r in whole["predictions"]] == [str(folder / name) for name in listed]
    one_by_one = predict_json(*(str(folder / name) for name in listed), cwd=project)
    assert whole == one_by_one
    # A file named explicitly is read by its bytes, whatever its name says.
    named = predict_json(str(folder / "seven.dat"), cwd=project)["predictions"]
    assert [(r["file"], r["predicted"]) for r in named] == [(str(folder / "seven.dat"), 7)]
