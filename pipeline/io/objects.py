"""Object storage: ``s3://``, ``gs://``, ``az://`` and ``memory://`` locations, through obstore.

``location(text)`` turns what a user typed into a plain :class:`~pathlib.Path` (local paths and
``file://`` URLs: read and written exactly as before, no object-store layer in between) or an
:class:`ObjectPath`, which behaves like a path where the job needs it (``/``, ``name``,
``with_name``) and adds the few object operations the job uses: whole small objects, byte
ranges, listings, and a create that fails when the object exists (the store's lock).

Credentials, endpoint and region come from the standard environment of each store kind
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``,
``AWS_ALLOW_HTTP``; ``GOOGLE_*``; ``AZURE_*``), on the client and on every worker; ``options``
(the configuration's ``storage.options``) are passed to obstore on top. One store object per
bucket and options is kept per process, so connections are reused and every ``memory://``
location of a process sees the same objects (``memory://`` is therefore for threads of one
process only).
"""

from __future__ import annotations

import io
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import SkyprepError

OBJECT_SCHEMES = ("s3", "s3a", "gs", "az", "abfs", "abfss", "azure", "memory")
# obstore's HTTP client settings (its ClientConfig); every other option configures the store itself.
CLIENT_OPTIONS = frozenset(
    "allow_http allow_invalid_certificates connect_timeout default_content_type default_headers http1_only "
    "http2_keep_alive_interval http2_keep_alive_timeout http2_keep_alive_while_idle http2_only pool_idle_timeout "
    "pool_max_idle_per_host proxy_url proxy_ca_certificate proxy_excludes root_certificate randomize_addresses "
    "read_timeout timeout user_agent".split()
)

_stores: dict[tuple, object] = {}
_stores_lock = threading.Lock()


class StorageError(SkyprepError):
    """An object-store location that cannot be used as given."""


def _obstore():
    """obstore, imported on first use (local paths never need it)."""
    try:
        import obstore
        import obstore.exceptions
        import obstore.store
    except ImportError:
        raise StorageError("object storage needs obstore: pip install 'skyprep[storage]'") from None
    return obstore


def _missing() -> tuple[type[Exception], ...]:
    return (_obstore().exceptions.NotFoundError, FileNotFoundError)


def _taken() -> tuple[type[Exception], ...]:
    errors = _obstore().exceptions
    return (errors.AlreadyExistsError, errors.PreconditionError, FileExistsError)


@dataclass(frozen=True)
class ObjectPath:
    """An object, or a prefix of objects, ``scheme://bucket/key`` in an object store.

    ``options`` are obstore's configuration keys for the store (e.g. ``endpoint``, ``region``,
    ``allow_http``), sorted ``(name, value)`` pairs, so the path pickles to workers and compares
    by value.
    """

    scheme: str
    bucket: str
    key: str = ""
    options: tuple[tuple[str, str | bool | int], ...] = ()

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}"

    def __truediv__(self, name: str) -> ObjectPath:
        key = "/".join(part for part in (self.key, str(name).strip("/")) if part)
        return ObjectPath(self.scheme, self.bucket, key, self.options)

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(self.scheme, self.bucket, self.key.rpartition("/")[0], self.options)

    def with_name(self, name: str) -> ObjectPath:
        return self.parent / name

    @property
    def store(self):
        """The obstore store of this path's bucket (one per process, bucket and options)."""
        ident = (self.scheme, self.bucket, self.options)
        with _stores_lock:
            if ident not in _stores:
                stores = _obstore().store
                if self.scheme == "memory":
                    _stores[ident] = stores.MemoryStore()
                else:
                    client = {k: v for k, v in self.options if k in CLIENT_OPTIONS}
                    config = {k: v for k, v in self.options if k not in CLIENT_OPTIONS}
                    _stores[ident] = stores.from_url(f"{self.scheme}://{self.bucket}", client_options=client or None,
                                                     **config)  # fmt: skip
            return _stores[ident]

    def zarr_store(self, read_only: bool = False):
        """This prefix as a Zarr store: zarr's ``ObjectStore`` over the bucket's one store, at ``key``."""
        from zarr.storage import ObjectStore, StorePath

        return StorePath(ObjectStore(self.store, read_only=read_only), self.key)

    # -- objects ----------------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether this object exists (a prefix: whether any object lies under it)."""
        try:
            _obstore().head(self.store, self.key)
            return True
        except _missing():
            return any(True for _ in self._keys(limit=1))

    def size(self) -> int:
        """The object's size in bytes; ``FileNotFoundError`` when there is none."""
        try:
            return int(_obstore().head(self.store, self.key)["size"])
        except _missing():
            raise FileNotFoundError(str(self)) from None

    def read_bytes(self) -> bytes:
        try:
            return bytes(_obstore().get(self.store, self.key).bytes())
        except _missing():
            raise FileNotFoundError(str(self)) from None

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def read_range(self, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` of the object: one ranged GET."""
        try:
            return bytes(_obstore().get_range(self.store, self.key, start=start, end=stop))
        except _missing():
            raise FileNotFoundError(str(self)) from None

    def read_ranges(self, starts: list[int], stops: list[int]) -> list[bytes]:
        """Several byte ranges, fetched together (obstore merges nearby ranges into one GET)."""
        try:
            return [bytes(b) for b in _obstore().get_ranges(self.store, self.key, starts=starts, ends=stops)]
        except _missing():
            raise FileNotFoundError(str(self)) from None

    def write_bytes(self, data: bytes) -> None:
        _obstore().put(self.store, self.key, data)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def create(self, data: bytes) -> bool:
        """Write the object only if there is none (a conditional PUT, ``If-None-Match: *``);
        False when it already existed. Atomic on the server: of two creators, one wins."""
        try:
            _obstore().put(self.store, self.key, data, mode="create")
            return True
        except _taken():
            return False

    def etag(self) -> str | None:
        """The object's current ETag (None when there is no object)."""
        try:
            return _obstore().head(self.store, self.key)["e_tag"]
        except _missing():
            return None

    def replace(self, data: bytes, etag: str) -> bool:
        """Overwrite the object only while it still has ``etag`` (``If-Match``); False otherwise."""
        try:
            _obstore().put(self.store, self.key, data, mode={"e_tag": etag})
            return True
        except (*_taken(), *_missing()):
            return False

    def unlink(self, missing_ok: bool = False) -> None:
        if not missing_ok and not self.exists():
            raise FileNotFoundError(str(self))
        _obstore().delete(self.store, self.key)

    def open(self, buffer_bytes: int = 1 << 20) -> io.BufferedReader:
        """The object as a seekable binary file, read by ranged GETs of ``buffer_bytes`` or more."""
        return io.BufferedReader(_RangedReader(self, self.size()), buffer_size=buffer_bytes)

    # -- listings ---------------------------------------------------------------------------

    def _keys(self, limit: int | None = None) -> Iterator[tuple[str, int]]:
        """``(key relative to this prefix, size)`` of the objects under it, recursively (at most ``limit``)."""
        prefix = f"{self.key}/" if self.key else ""
        found = 0
        for batch in _obstore().list(self.store, prefix=prefix or None):
            for meta in batch:
                yield meta["path"][len(prefix) :], int(meta["size"])
                found += 1
                if limit is not None and found >= limit:
                    return

    def files(self) -> list[tuple[str, int]]:
        """Every object under this prefix: ``(relative key, size)`` in key order."""
        return sorted(self._keys())

    def names(self) -> list[str]:
        """The names directly under this prefix (objects and sub-prefixes), like ``os.listdir``."""
        prefix = f"{self.key}/" if self.key else ""
        found = _obstore().list_with_delimiter(self.store, prefix=prefix or None)
        keys = [p.rstrip("/") for p in found["common_prefixes"]] + [meta["path"] for meta in found["objects"]]
        return sorted(key[len(prefix) :] for key in keys)


class _RangedReader(io.RawIOBase):
    """A read-only raw file over one object: every read is one ranged GET."""

    def __init__(self, path: ObjectPath, size: int):
        self.path, self.size, self.position = path, size, 0
        self.name = str(path)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer) -> int:
        stop = min(self.position + len(buffer), self.size)
        if stop <= self.position:
            return 0
        data = self.path.read_range(self.position, stop)
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


def location(text: str | Path, options: Mapping[str, str | bool | int] | None = None) -> Path | ObjectPath:
    """What ``text`` names: a :class:`~pathlib.Path` for a plain path or a ``file://`` URL, an
    :class:`ObjectPath` for an object-store URL; ``ValueError`` for another scheme."""
    if isinstance(text, (Path, ObjectPath)):
        return text
    text = str(text)
    if "://" not in text:
        return Path(text)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return Path(parts.path)
    if scheme not in OBJECT_SCHEMES:
        raise ValueError(f"{text}: unsupported storage scheme {scheme!r} (local paths, file://, "
                         f"{', '.join(s + '://' for s in OBJECT_SCHEMES)})")  # fmt: skip
    if not parts.netloc:
        raise ValueError(f"{text}: no bucket (expected {scheme}://BUCKET/PATH)")
    return ObjectPath(scheme, parts.netloc, parts.path.strip("/"), tuple(sorted((options or {}).items())))


def zarr_store(store: Path | ObjectPath | str):
    """What zarr opens for ``store``: a local path as a string (zarr's own LocalStore), an
    object-store prefix as zarr's ObjectStore."""
    where = location(store)
    return where.zarr_store() if isinstance(where, ObjectPath) else str(where)


@contextmanager
def writable_file(where: Path | ObjectPath) -> Iterator[Path]:
    """A local file to write ``where`` through: ``where`` itself when it is local, else a
    temporary file uploaded (one PUT) when the block ends without an error."""
    if not isinstance(where, ObjectPath):
        yield where
        return
    with tempfile.TemporaryDirectory(prefix="skyprep-") as tmp:
        local = Path(tmp) / (where.name or "object")
        yield local
        where.write_bytes(local.read_bytes())


@contextmanager
def writable_tree(where: Path | ObjectPath) -> Iterator[Path]:
    """A local folder to write the tree ``where`` through: ``where`` itself when it is local, else
    a temporary folder whose files are uploaded under the prefix when the block ends without an error."""
    if not isinstance(where, ObjectPath):
        yield where
        return
    with tempfile.TemporaryDirectory(prefix="skyprep-") as tmp:
        yield Path(tmp)
        for path in sorted(p for p in Path(tmp).rglob("*") if p.is_file()):
            (where / path.relative_to(tmp).as_posix()).write_bytes(path.read_bytes())
