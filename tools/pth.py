"""Read PyTorch state dicts (``.pth``) with pickle + numpy only, never importing torch.

Two on-disk formats exist:

* legacy (torch < 1.6): a stream of pickles (magic number, protocol version, sys info, the object,
  the list of storage keys) followed by each storage's raw bytes, preceded by an 8-byte element count;
* zip (torch >= 1.6): ``<name>/data.pkl`` plus one ``<name>/data/<key>`` entry per storage.

Both pickle tensors as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` with
storages as persistent ids. The unpickler maps an explicit allow-list of globals onto numpy; any
other global is refused, so a hostile file cannot run code. Every size and offset is checked against
the bytes actually present.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch storage class name -> little-endian numpy dtype
STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class PthError(ValueError):
    """The file is not a state dict this reader can load safely."""


@dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


@dataclass
class _Storage:
    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass
class _LazyTensor:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialize(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise PthError(f"storage {self.storage.key!r} has no data")
        size, stride, offset = self.size, self.stride, self.offset
        if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride):
            raise PthError(f"bad tensor geometry size={size} stride={stride}")
        if offset < 0:
            raise PthError(f"negative storage offset {offset}")
        count = int(np.prod(size, dtype=np.int64)) if size else 1
        if count:
            last = offset + sum((n - 1) * s for n, s in zip(size, stride))
            if last >= data.size:
                raise PthError(
                    f"tensor reaches element {last} of storage {self.storage.key!r} "
                    f"holding {data.size}"
                )
        view = np.lib.stride_tricks.as_strided(
            data[offset:] if count else data[:0],
            shape=size,
            strides=tuple(s * data.itemsize for s in stride),
            writeable=False,
        )
        return np.array(view, dtype=data.dtype.newbyteorder("="), copy=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_rest):
    if not isinstance(storage, _Storage):
        raise PthError("tensor does not reference a storage")
    return _LazyTensor(storage, int(storage_offset), tuple(map(int, size)), tuple(map(int, stride)))


def _rebuild_parameter(data, _requires_grad, _backward_hooks, *_rest):
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, storages: dict[str, _Storage]):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise PthError(f"refusing to unpickle global {module}.{name}") from None

    def persistent_load(self, pid):
        # legacy: ('storage', type, key, location, numel, view_metadata); zip: 5 fields.
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise PthError(f"unsupported persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise PthError(f"unsupported storage type {storage_type!r:.80}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise PthError(f"bad storage reference {pid!r:.80}")
        if len(pid) > 5 and pid[5] is not None:
            raise PthError("storage views are not supported")
        known = self.storages.get(key)
        if known is None:
            known = self.storages[key] = _Storage(key, storage_type.dtype, numel)
        elif known.dtype != storage_type.dtype or known.numel != numel:
            raise PthError(f"storage {key!r} referenced with two different types or sizes")
        return known


def _materialize(obj):
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def _state_dict(obj) -> dict[str, np.ndarray]:
    obj = _materialize(obj)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise PthError("file does not hold a state dict (a mapping of names to tensors)")
    return obj


def _load_legacy(raw: bytes) -> dict[str, np.ndarray]:
    f = io.BytesIO(raw)

    def plain_pickle():
        try:
            return _Unpickler(f, {}).load()
        except PthError:
            raise
        except Exception as e:  # noqa: BLE001 - any decoding failure means a bad file
            raise PthError(f"corrupt legacy header: {e}") from e

    if plain_pickle() != LEGACY_MAGIC:
        raise PthError("not a PyTorch file: bad magic number")
    if plain_pickle() != LEGACY_PROTOCOL:
        raise PthError("unsupported legacy protocol version")
    plain_pickle()  # sys info: endianness and type sizes, all little-endian defaults we assume
    storages: dict[str, _Storage] = {}
    try:
        obj = _Unpickler(f, storages).load()
        keys = _Unpickler(f, {}).load()
    except PthError:
        raise
    except Exception as e:  # noqa: BLE001
        raise PthError(f"corrupt legacy pickle: {e}") from e
    if not isinstance(keys, list) or set(keys) != set(storages):
        raise PthError("storage key list does not match the tensors")
    for key in keys:
        storage = storages[key]
        header = f.read(8)
        if len(header) != 8:
            raise PthError(f"truncated file: storage {key!r} missing")
        (numel,) = struct.unpack("<q", header)
        if numel != storage.numel:
            raise PthError(f"storage {key!r} holds {numel} elements, expected {storage.numel}")
        nbytes = numel * storage.dtype.itemsize
        chunk = f.read(nbytes)
        if len(chunk) != nbytes:
            raise PthError(f"truncated file: storage {key!r} has {len(chunk)} of {nbytes} bytes")
        storage.data = np.frombuffer(chunk, dtype=storage.dtype)
    return _state_dict(obj)


def _load_zip(raw: bytes) -> dict[str, np.ndarray]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
        names = archive.namelist()
    except zipfile.BadZipFile as e:
        raise PthError(f"corrupt zip archive: {e}") from e
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise PthError("zip archive has no single <name>/data.pkl")
    prefix = pickles[0][: -len("data.pkl")]
    if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder") != b"little":
        raise PthError("big-endian tensors are not supported")
    storages: dict[str, _Storage] = {}
    try:
        obj = _Unpickler(io.BytesIO(archive.read(pickles[0])), storages).load()
    except PthError:
        raise
    except Exception as e:  # noqa: BLE001
        raise PthError(f"corrupt data.pkl: {e}") from e
    for key, storage in storages.items():
        entry = f"{prefix}data/{key}"
        if entry not in names:
            raise PthError(f"storage {key!r} missing from archive")
        info = archive.getinfo(entry)
        nbytes = storage.numel * storage.dtype.itemsize
        if info.file_size < nbytes:
            raise PthError(f"storage {key!r} has {info.file_size} of {nbytes} bytes")
        try:
            chunk = archive.read(entry)[:nbytes]
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise PthError(f"corrupt storage {key!r}: {e}") from e
        storage.data = np.frombuffer(chunk, dtype=storage.dtype)
    return _state_dict(obj)


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Load a state dict of numpy arrays from a legacy or zip-format ``.pth`` file."""
    raw = Path(path).read_bytes()
    if raw[:4] == b"PK\x03\x04":
        return _load_zip(raw)
    if raw[:1] == b"\x80":  # pickle protocol >= 2 opcode
        return _load_legacy(raw)
    raise PthError(f"{path}: neither a zip nor a legacy PyTorch file")
