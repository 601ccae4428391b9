"""The artifact registry: content-addressed models and index snapshots at a URL.

``SHOPSTREAM_REGISTRY`` names it: ``file:///srv/registry`` (or a plain folder), ``http(s)://host/path``
(read-only: served by any static web server over a folder that ``learn`` writes), ``s3://bucket/path``
and every other protocol fsspec knows (cloud back-ends need their fsspec package: ``s3fs``, ``gcsfs``).

An artifact is a folder packed into one deterministic tar (sorted names, no owners, no times), kept
under ``<kind>/<sha256>.tar`` with a manifest ``<kind>/<sha256>.json`` (kind, name, sha256, bytes,
files). The models topic names an artifact by that key and its sha256; a worker resolves the key
against its own registry URL, so the writer (``learn`` on ``file://``) and the readers (``http://``)
need not share one. Fetching: the key must be ``<kind>/<sha256>.tar`` for the sha256 the record
names (nothing else, no ``..``, nothing outside the registry), the bytes are hashed while they are
downloaded into the worker's own cache, a mismatch is refused (:class:`RegistryError`) and the tar is
unpacked only when every member is a plain file or folder inside it.
"""
from __future__ import annotations

import hashlib
import io
import logging
import re
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from stream.errors import ConfigError, RegistryError

log = logging.getLogger(__name__)

KINDS = ("model", "index")
_KEY = re.compile(r"^(model|index)/([0-9a-f]{64})\.tar$")
_CHUNK = 1 << 20
CURRENT_INDEX = "index/current.json"        # the index a new host starts from when no model names one


def parse_registry_url(url: str) -> str:
    """The registry URL, normalised (a plain folder becomes ``file://``); a malformed one or an
    unknown protocol raises :class:`ConfigError` in one line."""
    url = str(url).strip()
    if not url:
        raise ConfigError("registry must not be empty")
    if "://" not in url:
        if url.startswith(("-", "~")) or ":" in url.split("/")[0]:
            raise ConfigError(f"registry {url!r} is neither a URL (file://, http(s)://, s3://) nor a folder")
        return "file://" + str(Path(url).resolve())
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme or ""):
        raise ConfigError(f"registry {url!r}: no protocol")
    from fsspec.registry import known_implementations
    from fsspec.registry import registry as loaded

    if scheme not in known_implementations and scheme not in loaded:
        raise ConfigError(f"registry {url!r}: unknown protocol {scheme!r} (file, http, https, s3, gs, ...)")
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise ConfigError(f"registry {url!r}: no host")
        try:
            parts.port
        except ValueError:
            raise ConfigError(f"registry {url!r}: bad port") from None
    if scheme == "file" and (parts.netloc not in ("", "localhost") or not parts.path.startswith("/")):
        raise ConfigError(f"registry {url!r}: a file URL is file:///absolute/folder")
    if scheme not in ("file", "http", "https") and not parts.netloc:
        raise ConfigError(f"registry {url!r}: no bucket or host")
    return url.rstrip("/")


def pack(folder: Path) -> bytes:
    """The folder as a deterministic tar: the same files give the same bytes (and sha256)."""
    folder = Path(folder)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
            info = tarfile.TarInfo(path.relative_to(folder).as_posix())
            info.size, info.mtime, info.mode = path.stat().st_size, 0, 0o644
            with path.open("rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()


@dataclass(frozen=True)
class Published:
    key: str            # <kind>/<sha256>.tar, relative to the registry
    sha256: str
    size: int


def artifact_key(kind: str, sha256: str) -> str:
    return f"{kind}/{sha256}.tar"


class Registry:
    """One registry URL and this host's cache of what was fetched from it (``cache_dir/<sha256>/``)."""

    def __init__(self, url: str, cache_dir: Path, metrics=None) -> None:
        self.url = parse_registry_url(url)
        self.cache_dir = Path(cache_dir)
        self.metrics = metrics
        self.fetched_bytes = 0
        self._fs = None

    def __repr__(self) -> str:
        return f"Registry({self.url})"

    @property
    def fs(self):
        if self._fs is None:
            import fsspec

            try:
                self._fs = fsspec.filesystem(urlsplit(self.url).scheme)
            except ImportError as exc:
                raise ConfigError(f"registry {self.url}: {exc} (install the fsspec back-end it names)") from exc
        return self._fs

    def _url(self, key: str) -> str:
        if urlsplit(self.url).scheme == "file":
            return urlsplit(self.url).path + "/" + key
        return self.url + "/" + key

    # -- writing (learn, index publish) -----------------------------------------------------------
    def publish(self, folder: Path, kind: str, name: str = "") -> Published:
        """Upload ``folder`` as a content-addressed artifact with its manifest (nothing is uploaded
        when the registry already holds those bytes)."""
        if kind not in KINDS:
            raise ConfigError(f"artifact kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self._check_writable()
        data = pack(folder)
        sha = hashlib.sha256(data).hexdigest()
        key = artifact_key(kind, sha)
        files = [{"path": p.relative_to(folder).as_posix(), "bytes": p.stat().st_size}
                 for p in sorted(Path(folder).rglob("*")) if p.is_file()]
        manifest = {"kind": kind, "name": name, "sha256": sha, "bytes": len(data), "key": key, "files": files,
                    "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            if not self.fs.exists(self._url(key)):
                self.fs.makedirs(self._url(kind), exist_ok=True)
                self._write(key, data)
                self._write(key[:-4] + ".json", orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        except Exception as exc:  # noqa: BLE001 - every back-end raises its own: one line says which
            raise RegistryError(f"cannot publish to the registry {self.url}: {_classify(exc)[1]}", "write") from None
        log.info("registry: published %s %s (%d bytes) as %s", kind, name, len(data), key)
        return Published(key, sha, len(data))

    def _check_writable(self) -> None:
        if urlsplit(self.url).scheme in ("http", "https"):
            raise ConfigError(f"the registry {self.url} is read-only over HTTP: publish to the folder or bucket "
                              "behind it (file:///..., s3://...)")

    def _write(self, key: str, data: bytes) -> None:
        tmp = f"{key}.part-{time.time_ns()}"
        with self.fs.open(self._url(tmp), "wb") as fh:
            fh.write(data)
        self.fs.mv(self._url(tmp), self._url(key))

    def write_pointer(self, key: str, doc: dict) -> None:
        self._check_writable()
        try:
            self._write(key, orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        except Exception as exc:  # noqa: BLE001 - every back-end raises its own: one line says which
            raise RegistryError(f"cannot write {key} to the registry {self.url}: {_classify(exc)[1]}", "write") from None

    def read_pointer(self, key: str) -> dict | None:
        """A small JSON document of the registry (None when it has none)."""
        try:
            with self.fs.open(self._url(key), "rb") as fh:
                raw = fh.read(1 << 20)
        except Exception as exc:  # noqa: BLE001 - every back-end raises its own: one line says which
            reason, why = _classify(exc)
            if reason == "missing":
                return None
            raise RegistryError(f"cannot read {key} from the registry {self.url}: {why}", reason) from None
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise RegistryError(f"{key} in the registry {self.url} is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise RegistryError(f"{key} in the registry {self.url} is not a JSON object")
        return doc

    # -- reading (workers, learn's decide) ----------------------------------------------------------
    def fetch(self, key: str, sha256: str) -> Path:
        """The artifact's folder in this host's cache, fetched and verified first when it is not
        there. Raises :class:`RegistryError` (refused) when the key is not the content address of
        ``sha256`` under the registry, the registry cannot be read, or the bytes do not hash to it."""
        m = _KEY.match(key or "")
        if m is None or m.group(2) != sha256:
            raise RegistryError(f"refused artifact {key!r}: not <model|index>/<sha256>.tar for sha256 {sha256!r} "
                                f"under the registry", "address")
        done = self.cache_dir / sha256
        if (done / ".verified").is_file():
            return done
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        part = self.cache_dir / f".{sha256}.part-{time.time_ns()}"
        digest, size = hashlib.sha256(), 0
        try:
            with self.fs.open(self._url(key), "rb") as src, part.open("wb") as dst:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
                    size += len(chunk)
        except Exception as exc:  # noqa: BLE001 - every back-end raises its own: one line says which
            part.unlink(missing_ok=True)
            reason, why = _classify(exc)
            raise RegistryError(f"cannot fetch {key} from the registry {self.url}: {why}", reason) from None
        self.fetched_bytes += size
        if self.metrics is not None:
            self.metrics.on_artifact_fetched(size)
        if digest.hexdigest() != sha256:
            part.unlink(missing_ok=True)
            raise RegistryError(f"refused {key} from {self.url}: its {size} bytes hash to sha256 "
                                f"{digest.hexdigest()[:16]}..., the record says {sha256[:16]}...", "sha256")
        staging = self.cache_dir / f".{sha256}.unpack-{time.time_ns()}"
        try:
            _unpack(part, staging)
            (staging / ".verified").write_text(sha256 + "\n")
            if done.exists():
                shutil.rmtree(done)
            staging.rename(done)
        finally:
            part.unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
        log.info("registry: fetched and verified %s (%d bytes) into %s", key, size, done)
        return done


def _unpack(tar_path: Path, out: Path) -> None:
    """Unpack plain files and folders whose names stay inside ``out``; anything else is refused."""
    out.mkdir(parents=True)
    try:
        with tarfile.open(tar_path, mode="r:") as tar:
            members = tar.getmembers()
            for m in members:
                name = Path(m.name)
                if not (m.isfile() or m.isdir()) or name.is_absolute() or ".." in name.parts:
                    raise RegistryError(f"refused artifact: member {m.name!r} is not a plain file inside it", "archive")
            tar.extractall(out, members=members, filter="data")
    except tarfile.TarError as exc:
        raise RegistryError(f"refused artifact: not a tar archive ({exc})", "archive") from None


def _classify(exc: BaseException) -> tuple[str, str]:
    """(``missing`` or ``unreachable``, one line): fsspec's HTTP back-end reports a refused
    connection as FileNotFoundError too, with the connection error as its cause."""
    chain, seen = [], exc
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for e in chain:
        if isinstance(e, (ConnectionError, TimeoutError)) or "Connect" in type(e).__name__:
            return "unreachable", _why(e)
    if isinstance(exc, FileNotFoundError):
        return "missing", _why(exc)
    return "unreachable", _why(chain[-1])


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
