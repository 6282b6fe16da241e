"""Fetch a data set's IDX files from mirrors, accepting only bytes whose checksum matches.

Each file streams through gzip decompression into a temporary file next to its final name;
it is renamed into place only after its payload sha256 (or upstream's gzip md5) matches the
pinned value. We store the decompressed payload: mirrors re-compress, so gzip bytes differ
from mirror to mirror, while the payload, and therefore the DVC hash of `data/raw`, does not.

Every download is bounded: decompression stops as soon as it passes the file's known payload
size (a gzip bomb fills no disk), each file has a deadline per mirror (a mirror trickling a byte
just before each read timeout would otherwise never end), and a local mirror's file must be a
regular file (a FIFO or a link to /dev/zero would block or never end).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import socket
import stat
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from mnist_pipeline.core import progress
from mnist_pipeline.core.config import DownloadConfig
from mnist_pipeline.core.datasets import DatasetSpec, FileSpec, raw_name
from mnist_pipeline.core.errors import PipelineError, redact
from mnist_pipeline.core.files import NOT_REGULAR, NotRegularFile, atomic_path, open_regular

MIRROR_ENV = "DATASET_MIRROR"
CHUNK = 1 << 16
# Most payload bytes one decompress call may produce: a 64 KiB chunk of a gzip bomb holds ~64 MiB.
INFLATE_STEP = 1 << 18
USER_AGENT = "mnist-dvc-pipeline/1.0 (+urllib)"
# A file's deadline on one mirror: DEADLINE_READS read timeouts (at least MIN_DEADLINE_S), plus one
# second per MIN_PAYLOAD_RATE bytes of payload. At the default timeout_s of 30 that is 770 s for the
# 47 MB of training images: 13 kB/s of MNIST's 9.7 MB of gzip, 34 kB/s of Fashion-MNIST's 26.4 MB.
DEADLINE_READS = 10
MIN_DEADLINE_S = 60.0
MIN_PAYLOAD_RATE = 100_000
URL_SCHEMES = ("http", "https", "file")
# What the download stage writes when the data set is a folder of the user's own pictures: its output is
# then this one note, not an empty folder DVC would warn about on every run.
FOLDER_NOTE = "folder-source.txt"
FOLDER_NOTE_TEXT = ("data.dataset is a local source (folder, digit_csv): nothing is downloaded. The preprocess "
                    "stage reads the folder or file data.folder names.\n")


class FetchError(Exception):
    """One mirror failed for one file.

    `transient` faults are worth a retry on the same mirror; a `missing` file is looked for in the
    mirror's next folder before the mirror counts as failed.
    """

    def __init__(self, reason: str, transient: bool, missing: bool = False) -> None:
        super().__init__(reason)
        self.transient = transient
        self.missing = missing


@dataclass(frozen=True)
class Mirror:
    """Where to look: the folders (URLs ending in "/") that may hold the files, tried in order."""

    label: str
    roots: tuple[str, ...]

    @property
    def root(self) -> str:
        return self.roots[0]

    def urls_for(self, file: FileSpec) -> list[str]:
        return [root + file.name for root in self.roots]

    def shows_location(self) -> bool:
        """A public mirror's label is its URL; `$DATASET_MIRROR`'s label hides which folders were read."""
        return self.roots != (self.label,)


def note_folder_source(raw_dir: str | os.PathLike[str]) -> Path:
    """The download stage's whole output for a local source (a folder, a CSV): a note saying where the data is."""
    final = Path(raw_dir) / FOLDER_NOTE
    with atomic_path(final) as tmp:
        tmp.write_text(FOLDER_NOTE_TEXT, encoding="utf-8")
    return final


def mirrors_for(spec: DatasetSpec, public: list[str], env_root: str | None) -> list[Mirror]:
    """The env mirror first, then the public base URLs in params order.

    The env mirror is `<root>/<mirror_dir>/` (`fashion-mnist/`, the published name) or else `<root>/<name>/`
    (`fashion_mnist/`, the name params.yaml uses).
    """
    found: list[Mirror] = []
    if env_root:
        folders = dict.fromkeys((spec.mirror_dir, spec.name))
        if "://" in env_root:
            roots = tuple(env_root.rstrip("/") + f"/{folder}/" for folder in folders)
        else:
            roots = tuple((Path(env_root).resolve() / folder).as_uri() + "/" for folder in folders)
        found.append(Mirror(f"${MIRROR_ENV}={redact(env_root)}", roots))
    for url in public:
        root = url if url.endswith("/") else url + "/"
        found.append(Mirror(redact(root), (root,)))
    return found


def file_deadline(file: FileSpec, timeout_s: float) -> float:
    """Seconds one mirror may take for `file`, derived from `timeout_s` and the payload size."""
    return max(MIN_DEADLINE_S, DEADLINE_READS * timeout_s) + file.payload_size / MIN_PAYLOAD_RATE


def shown(url: str) -> str:
    """A local file as its path, anything else as its URL."""
    parts = urllib.parse.urlsplit(url)
    return urllib.request.url2pathname(parts.path) if parts.scheme == "file" else redact(url)


def url_problem(url: str) -> str | None:
    """Why urllib could not even try `url` (a malformed host, port or scheme), or None."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check: "http://h:x/" raises here
    except ValueError as e:
        return str(e)
    if parts.scheme not in URL_SCHEMES:
        return f"unknown scheme {parts.scheme!r}: expected http, https or file" if parts.scheme else "no scheme"
    if parts.scheme != "file" and not parts.hostname:
        return "no host"
    return None


class Deadline:
    """Ends a download still running at its deadline, whatever it is waiting for.

    `timeout_s` bounds each wait for data, so a mirror sending a byte before each wait ends would
    never finish. At the deadline a timer shuts the connection's socket down: the blocked read
    returns at once, in the headers as in the body.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.received = 0
        self.expired = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired.is_set():
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired.set()
            for sock in self._sockets:
                _shut(sock)

    def error(self) -> FetchError:
        return FetchError(f"not finished within this file's {self.seconds:g} s deadline "
                          f"({self.received} bytes received)", transient=False)


def _shut(sock: socket.socket) -> None:
    # The plain socket's shutdown, also for TLS: SSLSocket.shutdown would drop its state under the reader.
    # An OSError means it is closed already: nothing is left to wake.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _opener(deadline: Deadline) -> urllib.request.OpenerDirector:
    """urllib's usual opener (proxies, redirects), whose HTTP(S) connections the deadline can shut."""

    def watched(connection_class: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
        class Watched(connection_class):  # type: ignore[valid-type, misc]
            def connect(self) -> None:
                super().connect()
                deadline.watch(self.sock)

        return Watched

    class HTTP(urllib.request.HTTPHandler):
        def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
            return super().do_open(watched(http_class), req, **kwargs)

    class HTTPS(urllib.request.HTTPSHandler):
        def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
            return super().do_open(watched(http_class), req, **kwargs)

    return urllib.request.build_opener(HTTP(), HTTPS())


def open_local(path: str) -> IO[bytes]:
    """A local mirror file through files.open_regular, its refusals as a mirror's failure."""
    try:
        return open_regular(path)
    except (FileNotFoundError, NotADirectoryError):
        raise FetchError("file not found", transient=False, missing=True) from None
    except NotRegularFile as e:
        if stat.S_ISDIR(e.mode):
            raise FetchError(f"{path}: a folder: expected a regular file", transient=False) from None
        raise FetchError(f"{path}: {NOT_REGULAR}", transient=False) from None
    except OSError as e:
        raise FetchError(f"{path}: cannot read ({e.strerror})", transient=False) from None


def _open(url: str, timeout: float, deadline: Deadline) -> tuple[IO[bytes], int | None]:
    """The byte stream at `url` and its length when known."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        source = open_local(urllib.request.url2pathname(parts.path))
        return source, os.fstat(source.fileno()).st_size
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    response = _opener(deadline).open(request, timeout=timeout)
    length = response.headers.get("Content-Length")
    return response, int(length) if length and length.isdigit() else None


class Payload:
    """The decompressed side of a download: gzip members in turn, hashed and written, never past the cap."""

    def __init__(self, out: IO[bytes], file: FileSpec) -> None:
        self.out = out
        self.limit = file.payload_size
        self.size = 0
        self.sha256 = hashlib.sha256()
        self.inflater = zlib.decompressobj(wbits=31)

    @property
    def complete(self) -> bool:
        """The last gzip member ended (a stream cut mid-member is not)."""
        return self.inflater.eof

    def feed(self, data: bytes) -> None:
        while data:
            if self.inflater.eof:  # the previous member ended: what follows is the next one
                self.inflater = zlib.decompressobj(wbits=31)
            payload = self.inflater.decompress(data, INFLATE_STEP)
            self.size += len(payload)
            if self.size > self.limit:
                raise FetchError(f"decompressed past the expected {self.limit} bytes of payload: "
                                 "stopped (a different file or a gzip bomb)", transient=False)
            self.sha256.update(payload)
            self.out.write(payload)
            data = self.inflater.unused_data if self.inflater.eof else self.inflater.unconsumed_tail


def _download(url: str, file: FileSpec, dest: Path, timeout: float, deadline: Deadline) -> None:
    """Download, decompress and verify into `dest` atomically; raise FetchError on any fault."""
    md5 = hashlib.md5()
    try:
        source, total = _open(url, timeout, deadline)
        with source, atomic_path(dest) as tmp:
            with open(tmp, "wb") as out, progress.bar(total, file.name) as bar:
                payload = Payload(out, file)
                while chunk := source.read1(CHUNK):
                    if deadline.expired.is_set():
                        raise deadline.error()
                    deadline.received += len(chunk)
                    bar.update(len(chunk))
                    md5.update(chunk)
                    payload.feed(chunk)
            received = deadline.received
            if total is not None and received < total:
                raise FetchError(f"connection closed after {received} of {total} bytes", transient=True)
            if not payload.complete:
                raise FetchError(f"truncated gzip stream after {received} bytes", transient=True)
            sha = payload.sha256.hexdigest()
            if sha != file.payload_sha256 and md5.hexdigest() != file.gzip_md5:
                raise FetchError(
                    f"checksum mismatch (payload sha256 {sha[:12]}..., expected {file.payload_sha256[:12]}...)",
                    transient=False,
                )
    except urllib.error.HTTPError as e:
        raise FetchError(f"HTTP {e.code} {e.reason}", transient=e.code >= 500, missing=e.code == 404) from None
    except urllib.error.URLError as e:
        raise FetchError(f"cannot connect ({e.reason})", transient=True) from None
    except TimeoutError:
        raise FetchError(f"timed out after {timeout:g} s without data", transient=True) from None
    except zlib.error as e:
        raise FetchError(f"not valid gzip data ({e})", transient=False) from None
    except http.client.InvalidURL as e:
        raise FetchError(f"not a valid URL ({e})", transient=False) from None
    except (http.client.HTTPException, ConnectionError, OSError) as e:
        raise FetchError(f"connection failed ({type(e).__name__}: {e})", transient=True) from None


def _stream_verified(url: str, file: FileSpec, dest: Path, timeout: float, deadline_s: float) -> None:
    """One try of one URL, within the file's deadline."""
    with Deadline(deadline_s) as deadline:
        try:
            _download(url, file, dest, timeout, deadline)
        except FetchError:
            if deadline.expired.is_set():
                raise deadline.error() from None
            raise


def _fetch_from(mirror: Mirror, file: FileSpec, dest: Path, timeout: float, retries: int,
                backoff_s: float, deadline_s: float) -> None:
    """Each folder of one mirror in turn while the file is missing, with retries for transient faults."""
    missing: list[str] = []
    last_missing = ""
    for url in mirror.urls_for(file):
        problem = url_problem(url)
        if problem:
            raise FetchError(f"not a valid URL ({problem})", transient=False)
        for attempt in range(retries + 1):
            try:
                _stream_verified(url, file, dest, timeout, deadline_s)
                return
            except FetchError as e:
                if e.missing:
                    missing.append(shown(url))
                    last_missing = str(e)
                    break
                if not e.transient or attempt == retries:
                    tries = f" (after {attempt + 1} tries)" if attempt else ""
                    raise FetchError(f"{e}{tries}", e.transient) from None
                time.sleep(backoff_s * (attempt + 1))
    tried = f": tried {', '.join(missing)}" if mirror.shows_location() else ""
    raise FetchError(f"{last_missing}{tried}", transient=False, missing=True)


def fetch_file(
    file: FileSpec, mirrors: list[Mirror], dest: Path, timeout: float, retries: int, backoff_s: float = 0.5,
    deadline_s: float | None = None,
) -> Mirror:
    """Try each mirror (with retries for transient faults) until one yields verified bytes.

    `deadline_s` bounds each try of one URL; None derives it from `timeout` and the file's size.
    """
    deadline = file_deadline(file, timeout) if deadline_s is None else deadline_s
    failures: list[str] = []
    for mirror in mirrors:
        try:
            _fetch_from(mirror, file, dest, timeout, retries, backoff_s, deadline)
            return mirror
        except FetchError as e:
            failures.append(f"{mirror.label}: {e}")
    raise PipelineError(redact(f"{file.name}: every mirror failed: " + "; ".join(failures)))


def download_dataset(
    spec: DatasetSpec,
    out_dir: str | os.PathLike[str],
    cfg: DownloadConfig,
    env_root: str | None = None,
) -> list[Path]:
    """All files of `spec` into `out_dir/<dataset>/`, decompressed and verified."""
    mirrors = mirrors_for(spec, cfg.mirrors[spec.name], env_root)
    if not mirrors:
        raise PipelineError(
            f"{spec.name}: no mirrors: set ${MIRROR_ENV} or download.mirrors.{spec.name} in params.yaml"
        )
    target = Path(out_dir) / spec.name
    written = []
    for file in spec.files:
        dest = target / raw_name(file.name)
        started = time.perf_counter()
        mirror = fetch_file(file, mirrors, dest, cfg.timeout_s, cfg.retries)
        size_mb = dest.stat().st_size / 1e6
        progress.say(
            f"download: {spec.name}: {file.name} from {mirror.label}: {size_mb:.1f} MB verified "
            f"in {time.perf_counter() - started:.1f} s"
        )
        written.append(dest)
    return written
