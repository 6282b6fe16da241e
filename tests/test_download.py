"""The downloader against a real HTTP server on 127.0.0.1 serving small generated IDX files.

Each fault a public mirror can show (404, 5xx, corrupt bytes, a cut connection, a stall) is
served for real; after every failure the destination holds no file, final or temporary.
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import hashlib
import http.server
import io
import ipaddress
import os
import re
import socket
import ssl
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import import_or_skip
from faultkit import error_line, stage_dir
from idxkit import encode_idx

from mnist_pipeline.core.config import DownloadConfig
from mnist_pipeline.core.datasets import (
    DATASETS,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    DatasetSpec,
    FileSpec,
    raw_name,
)
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.sources.download import (
    FetchError,
    Payload,
    download_dataset,
    fetch_file,
    file_deadline,
    mirrors_for,
)
from mnist_pipeline.sources.idx import read_idx

PROJECT_ROOT = Path(__file__).resolve().parents[1]
Behaviour = Callable[[http.server.BaseHTTPRequestHandler], None]


@dataclass
class Served:
    """A generated data set: raw IDX payloads, their gzip files, and a spec pinned to their checksums."""

    payloads: dict[str, bytes]
    gzips: dict[str, bytes]
    spec: DatasetSpec


def settings(mirrors: list[str], timeout: float) -> DownloadConfig:
    """The download section for the generated data set, which the params registry does not know."""
    return DownloadConfig.model_construct(mirrors={"tiny": mirrors}, timeout_s=timeout, retries=0)


def make_dataset() -> Served:
    rng = np.random.default_rng(7)
    arrays = {
        TRAIN_IMAGES: rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        TRAIN_LABELS: rng.integers(0, 10, 6, dtype=np.uint8),
        TEST_IMAGES: rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        TEST_LABELS: rng.integers(0, 10, 3, dtype=np.uint8),
    }
    payloads = {name: encode_idx(a) for name, a in arrays.items()}
    gzips = {name: gzip.compress(p, mtime=0) for name, p in payloads.items()}
    files = tuple(
        FileSpec(name, hashlib.sha256(payloads[name]).hexdigest(), hashlib.md5(gzips[name]).hexdigest(),
                 len(payloads[name]))
        for name in arrays
    )
    spec = DatasetSpec("tiny", "tiny-mirror-dir", files, tuple("0123456789"))
    return Served(payloads, gzips, spec)


def send(body: bytes, length: int | None = None, status: int = 200) -> Behaviour:
    """A response whose Content-Length may promise more than the body (then the connection closes)."""

    def behave(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Content-Length", str(len(body) if length is None else length))
        h.end_headers()
        h.wfile.write(body)

    return behave


def error(code: int) -> Behaviour:
    return lambda h: h.send_error(code)


@dataclass
class MirrorServer:
    """A threaded HTTP server; `routes` maps a path to the behaviours of its successive requests."""

    routes: dict[str, list[Behaviour]] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    port: int = 0
    scheme: str = "http"

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def publish(self, root: str, files: dict[str, bytes]) -> str:
        for name, body in files.items():
            self.routes[root + name] = [send(body)]
        return self.url(root)

    def stall(self, prefix: bytes = b"") -> Behaviour:
        """Send headers and `prefix` (or nothing at all), then hang until the test ends."""

        def behave(h: http.server.BaseHTTPRequestHandler) -> None:
            if prefix:
                h.send_response(200)
                h.send_header("Content-Length", str(len(prefix) * 10))
                h.end_headers()
                h.wfile.write(prefix)
                h.wfile.flush()
            self.release.wait(30)

        return behave


@contextlib.contextmanager
def running_server(tls: ssl.SSLContext | None = None) -> Iterator[MirrorServer]:
    """A MirrorServer on 127.0.0.1, speaking HTTPS when given a TLS context."""
    state = MirrorServer(scheme="https" if tls else "http")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.hits.append(self.path)
            queue = state.routes.get(self.path)
            if not queue:
                self.send_error(404)
                return
            # The last behaviour repeats for every later request.
            (queue.pop(0) if len(queue) > 1 else queue[0])(self)

        def log_message(self, format: str, *args: object) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: object, client_address: object) -> None:
            pass  # a client that gave up on a stalled handler is expected here

    httpd = Server(("127.0.0.1", 0), Handler)
    if tls:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    state.port = httpd.server_address[1]
    # A short poll keeps shutdown() quick; the default 0.5 s would be paid in every teardown.
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def server() -> Iterator[MirrorServer]:
    with running_server() as state:
        yield state


@pytest.fixture
def tls_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MirrorServer]:
    """An HTTPS mirror with a self-signed certificate for 127.0.0.1, trusted the way OpenSSL is told to:
    `SSL_CERT_FILE`. The default mirrors are https://, so the download code's TLS path is tested too."""
    x509 = import_or_skip("cryptography.x509", "pip install cryptography")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    with running_server(context) as state:
        yield state


@pytest.fixture
def data() -> Served:
    return make_dataset()


def leftovers(folder: Path) -> list[str]:
    """Every file under `folder`, temporary ones included."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def fetch_error(file: FileSpec, roots: list[str], dest: Path, **kwargs: float) -> str:
    mirrors = mirrors_for(DatasetSpec("tiny", "tiny-mirror-dir", (file,), ()), roots, None)
    with pytest.raises(PipelineError) as info:
        fetch_file(file, mirrors, dest, **{"timeout": 2.0, "retries": 0, "backoff_s": 0.0, **kwargs})
    message = str(info.value)
    assert "\n" not in message
    assert leftovers(dest.parent) == []
    return message


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_success_writes_verified_payloads(server: MirrorServer, data: Served, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    root = server.publish("/m1/", data.gzips)
    written = download_dataset(data.spec, tmp_path / "raw", settings([root], 2))
    folder = tmp_path / "raw" / "tiny"
    assert written == [folder / f.name.removesuffix(".gz") for f in data.spec.files]
    assert leftovers(folder) == sorted(p.name for p in written)  # no .tmp-* left beside them
    for path, file in zip(written, data.spec.files, strict=True):
        assert path.read_bytes() == data.payloads[file.name]
    assert read_idx(folder / "t10k-labels-idx1-ubyte", "labels").shape == (3,)
    assert sorted(server.hits) == sorted(f"/m1/{name}" for name in data.gzips)
    assert f"from {root}" in capsys.readouterr().err


def test_multi_member_gzip_is_accepted(server: MirrorServer, data: Served, tmp_path: Path) -> None:
    payload = data.payloads[TRAIN_IMAGES]
    two_members = gzip.compress(payload[:1000], mtime=0) + gzip.compress(payload[1000:], mtime=0)
    root = server.publish("/m1/", {TRAIN_IMAGES: two_members})
    file = data.spec.files[0]
    mirrors = mirrors_for(data.spec, [root], None)
    fetch_file(file, mirrors, tmp_path / "out" / "x", timeout=2, retries=0, backoff_s=0)
    assert (tmp_path / "out" / "x").read_bytes() == payload


def test_404_falls_back_to_next_mirror_without_retrying(server: MirrorServer, data: Served, tmp_path: Path) -> None:
    good = server.publish("/m2/", data.gzips)
    mirrors = mirrors_for(data.spec, [server.url("/m1/"), good], None)
    file = data.spec.files[1]
    used = fetch_file(file, mirrors, tmp_path / "out" / "labels", timeout=2, retries=3, backoff_s=0)
    assert used.root == good
    assert server.hits == [f"/m1/{file.name}", f"/m2/{file.name}"]  # a 404 is final: no retry
    assert (tmp_path / "out" / "labels").read_bytes() == data.payloads[file.name]


def test_server_error_is_retried_on_the_same_mirror(server: MirrorServer, data: Served, tmp_path: Path) -> None:
    file = data.spec.files[1]
    server.routes[f"/m1/{file.name}"] = [error(503), error(502), send(data.gzips[file.name])]
    mirrors = mirrors_for(data.spec, [server.url("/m1/")], None)
    used = fetch_file(file, mirrors, tmp_path / "out" / "labels", timeout=2, retries=2, backoff_s=0)
    assert used.root == server.url("/m1/")
    assert server.hits == [f"/m1/{file.name}"] * 3
    assert (tmp_path / "out" / "labels").read_bytes() == data.payloads[file.name]


def test_persistent_server_error_reports_the_tries(server: MirrorServer, data: Served, tmp_path: Path) -> None:
    file = data.spec.files[1]
    server.routes[f"/m1/{file.name}"] = [error(500)]
    message = fetch_error(file, [server.url("/m1/")], tmp_path / "out" / "labels", retries=2)
    reason = "HTTP 500 Internal Server Error (after 3 tries)"
    assert message == f"{file.name}: every mirror failed: {server.url('/m1/')}: {reason}"
    assert len(server.hits) == 3


def test_corrupt_payload_is_rejected(server: MirrorServer, data: Served, tmp_path: Path) -> None:
    file = data.spec.files[0]
    bad = bytearray(data.payloads[file.name])
    bad[100] ^= 1
    server.routes[f"/m1/{file.name}"] = [send(gzip.compress(bytes(bad), mtime=0))]
    message = fetch_error(file, [server.url("/m1/")], tmp_path / "out" / "images", retries=2)
    got, expected = hashlib.sha256(bytes(bad)).hexdigest()[:12], file.payload_sha256[:12]
    assert message == (f"{file.name}: every mirror failed: {server.url('/m1/')}: checksum mismatch "
                       f"(payload sha256 {got}..., expected {expected}...)")
    assert len(server.hits) == 1  # bad bytes are not a transient fault


def test_corrupt_gzip_is_rejected(server: MirrorServer, data: Served, tmp_path: Path) -> None:
    file = data.spec.files[0]
    server.routes[f"/m1/{file.name}"] = [send(b"<html>not gzip</html>")]
    message = fetch_error(file, [server.url("/m1/")], tmp_path / "out" / "images")
    assert f"{server.url('/m1/')}: not valid gzip data (" in message


def test_corrupt_file_among_good_ones_leaves_only_verified_files(server: MirrorServer, data: Served,
                                                                  tmp_path: Path) -> None:
    files = dict(data.gzips)
    files[TEST_IMAGES] = gzip.compress(data.payloads[TEST_IMAGES][:-1] + b"\x00", mtime=0)
    root = server.publish("/m1/", files)
    with pytest.raises(PipelineError, match=f"^{TEST_IMAGES}: every mirror failed: .*checksum mismatch"):
        download_dataset(data.spec, tmp_path / "raw", settings([root], 2))
    # The two files before it were verified and stay; the bad one and its temporary are gone.
    assert leftovers(tmp_path / "raw" / "tiny") == ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"]


def test_corrupt_mirror_falls_back_to_good_one(server: MirrorServer, data: Served, tmp_path: Path) -> None:
    bad = {name: gzip.compress(p[::-1], mtime=0) for name, p in data.payloads.items()}
    roots = [server.publish("/bad/", bad), server.publish("/good/", data.gzips)]
    written = download_dataset(data.spec, tmp_path / "raw", settings(roots, 2))
    assert [p.read_bytes() for p in written] == [data.payloads[f.name] for f in data.spec.files]


def test_connection_cut_mid_file(server: MirrorServer, data: Served, tmp_path: Path) -> None:
    file = data.spec.files[0]
    body = data.gzips[file.name]
    server.routes[f"/m1/{file.name}"] = [send(body[: len(body) // 2], length=len(body))]
    message = fetch_error(file, [server.url("/m1/")], tmp_path / "out" / "images", retries=1)
    assert message == (f"{file.name}: every mirror failed: {server.url('/m1/')}: connection closed after "
                       f"{len(body) // 2} of {len(body)} bytes (after 2 tries)")
    assert len(server.hits) == 2  # a cut connection is transient: retried once


def test_connection_cut_then_retry_succeeds(server: MirrorServer, data: Served, tmp_path: Path) -> None:
    file = data.spec.files[0]
    body = data.gzips[file.name]
    server.routes[f"/m1/{file.name}"] = [send(body[:100], length=len(body)), send(body)]
    mirrors = mirrors_for(data.spec, [server.url("/m1/")], None)
    fetch_file(file, mirrors, tmp_path / "out" / "images", timeout=2, retries=1, backoff_s=0)
    assert (tmp_path / "out" / "images").read_bytes() == data.payloads[file.name]
    assert leftovers(tmp_path / "out") == ["images"]


@pytest.mark.parametrize("when", ["before-headers", "mid-body"])
def test_stalled_server_hits_the_timeout(server: MirrorServer, data: Served, tmp_path: Path, when: str) -> None:
    file = data.spec.files[0]
    prefix = data.gzips[file.name][:50] if when == "mid-body" else b""
    server.routes[f"/m1/{file.name}"] = [server.stall(prefix)]
    timeout_s = 0.5
    message = fetch_error(file, [server.url("/m1/")], tmp_path / "out" / "images", timeout=timeout_s)
    assert message == (f"{file.name}: every mirror failed: {server.url('/m1/')}: timed out after {timeout_s:g} s "
                       "without data")


def test_all_mirrors_failing_give_one_message_listing_each(server: MirrorServer, data: Served,
                                                           tmp_path: Path) -> None:
    env_root = tmp_path / "empty-mirror"
    env_root.mkdir()
    file = data.spec.files[0]
    server.routes[f"/corrupt/{file.name}"] = [send(gzip.compress(b"junk", mtime=0))]
    server.routes[f"/stall/{file.name}"] = [server.stall()]
    refused = f"http://127.0.0.1:{closed_port()}/x/"
    public = [server.url("/missing/"), server.url("/corrupt/"), refused, server.url("/stall/")]
    with pytest.raises(PipelineError) as info:
        download_dataset(data.spec, tmp_path / "raw", settings(public, 0.5), env_root=str(env_root))
    message = str(info.value)
    assert "\n" not in message
    expected = [
        f"$DATASET_MIRROR={env_root}: file not found",
        f"{server.url('/missing/')}: HTTP 404 ",
        f"{server.url('/corrupt/')}: checksum mismatch (",
        f"{refused}: cannot connect (",
        f"{server.url('/stall/')}: timed out after 0.5 s without data",
    ]
    assert message.startswith(f"{file.name}: every mirror failed: {expected[0]}")
    positions = [message.find(part) for part in expected]
    assert -1 not in positions, message
    assert positions == sorted(positions), message
    assert message.count("; ") == len(expected) - 1
    assert leftovers(tmp_path / "raw") == []


def test_env_mirror_directory_is_tried_first(server: MirrorServer, data: Served, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "mirror" / data.spec.mirror_dir
    folder.mkdir(parents=True)
    for name, body in data.gzips.items():
        (folder / name).write_bytes(body)
    public = server.publish("/pub/", data.gzips)
    written = download_dataset(data.spec, tmp_path / "raw", settings([public], 2),
                               env_root=str(tmp_path / "mirror"))
    assert [p.read_bytes() for p in written] == [data.payloads[f.name] for f in data.spec.files]
    assert server.hits == []  # the public mirror was never asked
    assert f"from $DATASET_MIRROR={tmp_path / 'mirror'}" in capsys.readouterr().err


def test_env_mirror_url_root_is_tried_first(server: MirrorServer, data: Served, tmp_path: Path) -> None:
    server.publish(f"/env/{data.spec.mirror_dir}/", data.gzips)
    public = server.publish("/pub/", data.gzips)
    download_dataset(data.spec, tmp_path / "raw", settings([public], 2), env_root=server.url("/env"))
    assert sorted(server.hits) == sorted(f"/env/{data.spec.mirror_dir}/{name}" for name in data.gzips)


def test_failing_env_mirror_falls_back_to_public(server: MirrorServer, data: Served, tmp_path: Path) -> None:
    public = server.publish("/pub/", data.gzips)
    written = download_dataset(data.spec, tmp_path / "raw", settings([public], 2),
                               env_root=server.url("/env/"))
    assert [p.read_bytes() for p in written] == [data.payloads[f.name] for f in data.spec.files]
    file = data.spec.files[0].name
    # Both spellings of the data set's folder, then the public mirror.
    assert server.hits[:3] == [f"/env/{data.spec.mirror_dir}/{file}", f"/env/{data.spec.name}/{file}", f"/pub/{file}"]


def test_upstream_gzip_md5_is_an_alternative_proof(server: MirrorServer, data: Served, tmp_path: Path) -> None:
    file = data.spec.files[1]
    root = server.publish("/m1/", data.gzips)
    md5_only = replace(file, payload_sha256="0" * 64)
    mirrors = mirrors_for(data.spec, [root], None)
    fetch_file(md5_only, mirrors, tmp_path / "out" / "labels", timeout=2, retries=0, backoff_s=0)
    assert (tmp_path / "out" / "labels").read_bytes() == data.payloads[file.name]
    neither = replace(file, payload_sha256="0" * 64, gzip_md5="0" * 32)
    assert "checksum mismatch" in fetch_error(neither, [root], tmp_path / "other" / "labels")


def test_stage_prints_one_error_line_and_exits_2(server: MirrorServer, tmp_path: Path) -> None:
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["download"]["mirrors"]["mnist"] = [server.url("/nothing/")]
    params["download"]["retries"] = 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if k != "DATASET_MIRROR"}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    result = subprocess.run([sys.executable, "-m", "stages.download", "data/raw"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {TRAIN_IMAGES}: every mirror failed: {server.url('/nothing/')}: HTTP 404 Not Found"
    ]
    assert leftovers(tmp_path / "data") == []


# --- bounded downloads: a payload past its size, a mirror that never finishes ---


def gzip_bomb(mebibytes: int) -> Iterator[bytes]:
    """One gzip member of `mebibytes` MiB of zeros, streamed: one compressed MiB (fully flushed, so
    independent of what came before) repeated, which costs far less than compressing it all."""
    block = bytes(1 << 20)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = packer.compress(block) + packer.flush(zlib.Z_FULL_FLUSH)
    yield b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # gzip header: deflate, no name, mtime 0
    crc = 0
    for _ in range(mebibytes):
        yield segment
        crc = zlib.crc32(block, crc)
    yield zlib.compressobj(9, zlib.DEFLATED, -15).flush() + struct.pack("<II", crc, (mebibytes << 20) & 0xFFFFFFFF)


def stream(parts: Iterator[bytes]) -> Behaviour:
    """A body without Content-Length, written as it is made, until the client hangs up."""

    def behave(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.end_headers()
        with contextlib.suppress(OSError):  # the client stopped reading: what the test wants
            for part in parts:
                h.wfile.write(part)

    return behave


def trickle(server: MirrorServer, data: bytes, interval_s: float, headers: bool) -> Behaviour:
    """`data` one byte every `interval_s`, each byte well inside the read timeout; with `headers`,
    the status line and headers trickle too."""

    def behave(h: http.server.BaseHTTPRequestHandler) -> None:
        head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        slow = head + data if headers else data
        with contextlib.suppress(OSError):  # the client hung up at its deadline
            if not headers:
                h.wfile.write(head)
            for i in range(len(slow)):
                h.wfile.write(slow[i:i + 1])
                if server.release.wait(interval_s):
                    return

    return behave


def test_gzip_bomb_stops_at_the_payload_size(server: MirrorServer, data: Served, tmp_path: Path) -> None:
    file = data.spec.files[1]
    url = server.url("/m1/")
    server.routes[f"/m1/{file.name}"] = [stream(gzip_bomb(200))]
    message = fetch_error(file, [url], tmp_path / "out" / "labels", retries=2)
    assert message == (f"{file.name}: every mirror failed: {url}: decompressed past the expected {file.payload_size} "
                       "bytes of payload: stopped (a different file or a gzip bomb)")
    assert len(server.hits) == 1  # not retried: the same mirror would send the same bytes


def test_payload_writes_nothing_past_its_size() -> None:
    file = make_dataset().spec.files[0]
    out = io.BytesIO()
    payload = Payload(out, file)
    with pytest.raises(FetchError, match=r"^decompressed past the expected "):
        for part in gzip_bomb(200):
            payload.feed(part)
    assert len(out.getvalue()) <= file.payload_size
    assert out.getvalue() == bytes(len(out.getvalue()))


def test_payload_longer_than_expected_is_stopped(server: MirrorServer, data: Served, tmp_path: Path) -> None:
    file = data.spec.files[3]
    longer = gzip.compress(data.payloads[file.name] + b"\x00", mtime=0)
    server.routes[f"/m1/{file.name}"] = [send(longer)]
    message = fetch_error(file, [server.url("/m1/")], tmp_path / "out" / "labels")
    assert message.endswith(f": decompressed past the expected {file.payload_size} bytes of payload: "
                            "stopped (a different file or a gzip bomb)")


@pytest.mark.parametrize("where", ["headers", "body"])
def test_trickling_server_hits_the_deadline(server: MirrorServer, data: Served, tmp_path: Path, where: str) -> None:
    file = data.spec.files[0]
    url = server.url("/m1/")
    server.routes[f"/m1/{file.name}"] = [trickle(server, data.gzips[file.name], 0.02, headers=where == "headers")]
    # Each byte comes well within the 2 s read timeout; only the deadline can end this.
    deadline_s = 0.3
    message = fetch_error(file, [url], tmp_path / "out" / "images", timeout=2.0, retries=2, deadline_s=deadline_s)
    counted = re.search(r"\((\d+) bytes received\)$", message)
    assert counted, message
    received = int(counted.group(1))
    assert message == (f"{file.name}: every mirror failed: {url}: not finished within this file's {deadline_s:g} s "
                       f"deadline ({received} bytes received)")
    assert received == 0 if where == "headers" else 0 < received < len(data.gzips[file.name])
    assert len(server.hits) == 1  # a mirror too slow for the deadline is not retried


def test_deadline_grows_with_timeout_and_payload() -> None:
    images = DATASETS["mnist"].files[0]
    assert images.payload_size == 47_040_016
    assert file_deadline(images, 30) == pytest.approx(300 + 470.40016)  # the default timeout_s
    assert file_deadline(images, 1) == pytest.approx(60 + 470.40016)  # never under a minute plus the payload's


def test_payload_sizes_match_the_mirror_files(mirror_root: Path) -> None:
    for spec in DATASETS.values():
        for file in spec.files:
            gz = (mirror_root / spec.mirror_dir / file.name).read_bytes()
            # A one-member gzip ends with its payload's size (mod 2**32); the mirror's files are one member each.
            assert struct.unpack("<I", gz[-4:])[0] == file.payload_size, (spec.name, file.name)


# --- $DATASET_MIRROR: both folder spellings, and the paths it tried ---


def test_env_mirror_folder_may_be_named_after_the_data_set(data: Served, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "mirror" / data.spec.name  # "tiny/", not the mirror_dir "tiny-mirror-dir/"
    folder.mkdir(parents=True)
    for name, body in data.gzips.items():
        (folder / name).write_bytes(body)
    written = download_dataset(data.spec, tmp_path / "raw", settings([], 2), env_root=str(tmp_path / "mirror"))
    assert [p.read_bytes() for p in written] == [data.payloads[f.name] for f in data.spec.files]
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" from ")[0] for line in lines] == [f"download: tiny: {f.name}" for f in data.spec.files]


def test_env_mirror_url_folder_may_be_named_after_the_data_set(server: MirrorServer, data: Served,
                                                               tmp_path: Path) -> None:
    server.publish(f"/env/{data.spec.name}/", data.gzips)
    written = download_dataset(data.spec, tmp_path / "raw", settings([], 2), env_root=server.url("/env"))
    assert [p.read_bytes() for p in written] == [data.payloads[f.name] for f in data.spec.files]
    first = data.spec.files[0].name
    assert server.hits[:2] == [f"/env/{data.spec.mirror_dir}/{first}", f"/env/{data.spec.name}/{first}"]


def test_env_mirror_in_the_wrong_folder_names_the_paths_tried(server: MirrorServer, data: Served,
                                                              tmp_path: Path) -> None:
    root = tmp_path / "mirror"
    (root / "tiny_mnist").mkdir(parents=True)
    file = data.spec.files[0]
    with pytest.raises(PipelineError) as info:
        download_dataset(data.spec, tmp_path / "raw", settings([], 2), env_root=str(root))
    assert str(info.value) == (f"{file.name}: every mirror failed: $DATASET_MIRROR={root}: file not found: "
                               f"tried {root}/tiny-mirror-dir/{file.name}, {root}/tiny/{file.name}")
    env = server.url("/env")
    with pytest.raises(PipelineError) as info:
        download_dataset(data.spec, tmp_path / "raw", settings([], 2), env_root=env)
    assert str(info.value) == (f"{file.name}: every mirror failed: $DATASET_MIRROR={env}: HTTP 404 Not Found: "
                               f"tried {env}/tiny-mirror-dir/{file.name}, {env}/tiny/{file.name}")


def test_stage_reads_fashion_mnist_from_a_folder_named_fashion_mnist(mirror_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "mirror"
    root.mkdir()
    (root / "fashion_mnist").symlink_to(mirror_root / "fashion-mnist", target_is_directory=True)
    project = stage_dir(tmp_path / "p", mirror=root, params={"data.dataset": "fashion_mnist"})
    result = project.run("download", timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert [line.split(" from ")[0] for line in lines] == [
        f"download: fashion_mnist: {f.name}" for f in DATASETS["fashion_mnist"].files]
    assert all(f" from $DATASET_MIRROR={root}: " in line for line in lines)
    raw = project.path / "data" / "raw" / "fashion_mnist"
    assert sorted(p.name for p in raw.iterdir()) == sorted(raw_name(f.name) for f in DATASETS["fashion_mnist"].files)
    assert read_idx(raw / "t10k-labels-idx1-ubyte", "labels")[:5].tolist() == [9, 2, 1, 1, 6]


def test_stage_in_the_wrong_folder_names_both_paths_tried(server: MirrorServer, tmp_path: Path) -> None:
    root = (tmp_path / "mirror").resolve()
    (root / "fashion").mkdir(parents=True)
    project = stage_dir(tmp_path / "p", mirror=root, params={
        "data.dataset": "fashion_mnist", "download.mirrors.fashion_mnist": [server.url("/nothing/")],
        "download.retries": 0})
    assert error_line(project.run("download", timeout=120)) == (
        f"error: {TRAIN_IMAGES}: every mirror failed: $DATASET_MIRROR={root}: file not found: "
        f"tried {root}/fashion-mnist/{TRAIN_IMAGES}, {root}/fashion_mnist/{TRAIN_IMAGES}; "
        f"{server.url('/nothing/')}: HTTP 404 Not Found")


# --- values urllib and sockets cannot take: one line each, never a traceback ---


def test_stage_refuses_a_timeout_sockets_cannot_take(tmp_path: Path) -> None:
    project = stage_dir(tmp_path / "p", params={"download.timeout_s": 1e300})
    assert "1.0e+300" in project.params_file.read_text()
    assert error_line(project.run("download", timeout=120)) == (
        "error: params.yaml: download.timeout_s = 1e+300: expected a number in (0, 1e+06)")


def test_stage_reports_a_malformed_mirror_url_and_goes_on(server: MirrorServer, tmp_path: Path) -> None:
    project = stage_dir(tmp_path / "p", params={
        "download.mirrors.mnist": ["http://[::1/", server.url("/nothing/")], "download.retries": 0})
    assert error_line(project.run("download", timeout=120)) == (
        f"error: {TRAIN_IMAGES}: every mirror failed: http://[::1/: not a valid URL (Invalid IPv6 URL); "
        f"{server.url('/nothing/')}: HTTP 404 Not Found")
    assert len(server.hits) == 1  # the next mirror was still asked


def test_stage_reports_a_malformed_dataset_mirror_url(server: MirrorServer, tmp_path: Path) -> None:
    project = stage_dir(tmp_path / "p", params={"download.mirrors.mnist": [server.url("/nothing/")],
                                                "download.retries": 0})
    result = project.run("download", env={"DATASET_MIRROR": "http://[::1"}, timeout=120)
    assert error_line(result) == (
        f"error: {TRAIN_IMAGES}: every mirror failed: $DATASET_MIRROR=http://[::1: not a valid URL "
        f"(Invalid IPv6 URL); {server.url('/nothing/')}: HTTP 404 Not Found")


@pytest.mark.parametrize(("env_root", "problem"), [
    ("http://127.0.0.1:port/", "Port could not be cast to integer value as 'port'"),
    ("http://127.0.0.1:99999/", "Port out of range 0-65535"),
    ("htp://example.org/", "unknown scheme 'htp': expected http, https or file"),
    ("http:///no/host/", "no host"),
])
def test_malformed_dataset_mirror_url_fails_that_mirror_only(server: MirrorServer, data: Served, tmp_path: Path,
                                                             env_root: str, problem: str) -> None:
    public = server.publish("/pub/", data.gzips)
    with pytest.raises(PipelineError) as info:
        download_dataset(data.spec, tmp_path / "raw", settings([server.url("/nothing/")], 2), env_root=env_root)
    file = data.spec.files[0].name
    assert str(info.value) == (f"{file}: every mirror failed: $DATASET_MIRROR={env_root}: not a valid URL "
                               f"({problem}); {server.url('/nothing/')}: HTTP 404 Not Found")
    written = download_dataset(data.spec, tmp_path / "raw", settings([public], 2), env_root=env_root)
    assert [p.read_bytes() for p in written] == [data.payloads[f.name] for f in data.spec.files]


# --- the default mirrors are https://: the same bounds over TLS ---


def test_https_mirror_downloads_and_verifies(tls_server: MirrorServer, data: Served, tmp_path: Path) -> None:
    root = tls_server.publish("/m1/", data.gzips)
    assert root.startswith("https://127.0.0.1:")
    written = download_dataset(data.spec, tmp_path / "raw", settings([root], 2))
    assert [p.read_bytes() for p in written] == [data.payloads[f.name] for f in data.spec.files]


def test_trickling_https_mirror_hits_the_deadline(tls_server: MirrorServer, data: Served, tmp_path: Path) -> None:
    file = data.spec.files[0]
    url = tls_server.url("/m1/")
    tls_server.routes[f"/m1/{file.name}"] = [trickle(tls_server, data.gzips[file.name], 0.02, headers=False)]
    deadline_s = 0.3
    message = fetch_error(file, [url], tmp_path / "out" / "images", timeout=2.0, deadline_s=deadline_s)
    assert re.fullmatch(re.escape(f"{file.name}: every mirror failed: {url}: not finished within this file's "
                                  f"{deadline_s:g} s deadline (") + r"[1-9]\d* bytes received\)", message), message


@pytest.mark.parametrize("user_info", ["user:secret", "secret"])
def test_credentials_in_a_mirror_url_never_reach_a_message(tmp_path: Path, user_info: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A password in a mirror URL (params.yaml or $DATASET_MIRROR) is redacted in the error line."""
    from mnist_pipeline.core.cli import fail

    file = FileSpec("tiny.gz", "0" * 64, "0" * 32, 1)
    port = closed_port()
    message = fetch_error(file, [f"http://{user_info}@127.0.0.1:{port}/"], tmp_path / "raw" / "tiny")
    assert "secret" not in message
    assert f"http://***@127.0.0.1:{port}/" in message
    mirrors = mirrors_for(DatasetSpec("tiny", "tiny-mirror-dir", (file,), ()), [], f"https://{user_info}@mirror/x")
    assert mirrors[0].label == "$DATASET_MIRROR=https://***@mirror/x"

    # Any message that quotes a URL, whichever code raised it: the one error line every command prints.
    fail(PipelineError(f"params.yaml: download.mirrors = ['ftp://{user_info}@host/'] and http://a:b@c/"))
    assert capsys.readouterr().err == (
        "error: params.yaml: download.mirrors = ['ftp://***@host/'] and http://***@c/\n")
