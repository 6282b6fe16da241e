"""Fetch a data set's IDX files from mirrors, accepting only bytes whose checksum matches.

Each file streams through gzip decompression into a temporary file next to its final name;
it is renamed into place only after its payload sha256 (or upstream's gzip md5) matches the
pinned value. We store the decompressed payload: mirrors re-compress, so gzip bytes differ
from mirror to mirror, while the payload, and therefore the DVC hash of `data/raw`, does not.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from mnist_pipeline import progress
from mnist_pipeline.config import DownloadConfig
from mnist_pipeline.datasets import DatasetSpec, FileSpec, raw_name
from mnist_pipeline.errors import PipelineError
from mnist_pipeline.files import atomic_path

MIRROR_ENV = "DATASET_MIRROR"
CHUNK = 1 << 16
USER_AGENT = "mnist-dvc-pipeline/1.0 (+urllib)"


class FetchError(Exception):
    """One mirror failed for one file; `transient` faults are worth a retry on the same mirror."""

    def __init__(self, reason: str, transient: bool) -> None:
        super().__init__(reason)
        self.transient = transient


@dataclass(frozen=True)
class Mirror:
    """Where to look: `url_for(file)` gives the address of one file on this mirror."""

    label: str
    root: str  # URL ending in "/"

    def url_for(self, file: FileSpec) -> str:
        return self.root + file.name


def mirrors_for(spec: DatasetSpec, public: list[str], env_root: str | None) -> list[Mirror]:
    """The env mirror first (`<root>/<mirror_dir>/`), then the public base URLs in params order."""
    found: list[Mirror] = []
    if env_root:
        if "://" in env_root:
            root = env_root.rstrip("/") + f"/{spec.mirror_dir}/"
        else:
            root = (Path(env_root).resolve() / spec.mirror_dir).as_uri() + "/"
        found.append(Mirror(f"${MIRROR_ENV}={env_root}", root))
    for url in public:
        root = url if url.endswith("/") else url + "/"
        found.append(Mirror(root, root))
    return found


def _stream_verified(url: str, file: FileSpec, dest: Path, timeout: float) -> None:
    """Download, decompress and verify into `dest` atomically; raise FetchError on any fault."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    md5, sha = hashlib.md5(), hashlib.sha256()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, atomic_path(dest) as tmp:
            length = response.headers.get("Content-Length") if hasattr(response, "headers") else None
            total = int(length) if length and length.isdigit() else None
            inflater = zlib.decompressobj(wbits=31)
            received = 0
            with open(tmp, "wb") as out, progress.bar(total, file.name) as bar:
                while chunk := response.read(CHUNK):
                    received += len(chunk)
                    bar.update(len(chunk))
                    md5.update(chunk)
                    while chunk:
                        payload = inflater.decompress(chunk)
                        sha.update(payload)
                        out.write(payload)
                        # A gzip file may hold several members; start a new one after each end.
                        chunk = inflater.unused_data if inflater.eof else b""
                        if inflater.eof:
                            inflater = zlib.decompressobj(wbits=31) if chunk else inflater
            if total is not None and received < total:
                raise FetchError(f"connection closed after {received} of {total} bytes", transient=True)
            if not inflater.eof:
                raise FetchError(f"truncated gzip stream after {received} bytes", transient=True)
            if sha.hexdigest() != file.payload_sha256 and md5.hexdigest() != file.gzip_md5:
                raise FetchError(
                    f"checksum mismatch (payload sha256 {sha.hexdigest()[:12]}..., "
                    f"expected {file.payload_sha256[:12]}...)",
                    transient=False,
                )
    except urllib.error.HTTPError as e:
        raise FetchError(f"HTTP {e.code} {e.reason}", transient=e.code >= 500) from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, FileNotFoundError):
            raise FetchError("file not found", transient=False) from None
        raise FetchError(f"cannot connect ({reason})", transient=True) from None
    except TimeoutError:
        raise FetchError(f"timed out after {timeout:g} s without data", transient=True) from None
    except zlib.error as e:
        raise FetchError(f"not valid gzip data ({e})", transient=False) from None
    except (http.client.HTTPException, ConnectionError, OSError) as e:
        raise FetchError(f"connection failed ({type(e).__name__}: {e})", transient=True) from None


def fetch_file(
    file: FileSpec, mirrors: list[Mirror], dest: Path, timeout: float, retries: int, backoff_s: float = 0.5
) -> Mirror:
    """Try each mirror (with retries for transient faults) until one yields verified bytes."""
    failures: list[str] = []
    for mirror in mirrors:
        for attempt in range(retries + 1):
            try:
                _stream_verified(mirror.url_for(file), file, dest, timeout)
                return mirror
            except FetchError as e:
                if not e.transient or attempt == retries:
                    tries = f" (after {attempt + 1} tries)" if attempt else ""
                    failures.append(f"{mirror.label}: {e}{tries}")
                    break
                time.sleep(backoff_s * (attempt + 1))
    raise PipelineError(f"{file.name}: every mirror failed: " + "; ".join(failures))


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
            f"download: {file.name} from {mirror.label}: {size_mb:.1f} MB verified "
            f"in {time.perf_counter() - started:.1f} s"
        )
        written.append(dest)
    return written
