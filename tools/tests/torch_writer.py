"""Writes state dicts in PyTorch's two .pth formats without torch, for tests.

The pickles must name torch's globals (torch._utils._rebuild_tensor_v2, torch.FloatStorage), so
stand-in modules are registered under those names while pickling, then removed.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import struct
import sys
import types
import zipfile

import numpy as np

import pth

_STORAGE_NAMES = {np.dtype(v).str: k for k, v in pth.STORAGE_DTYPES.items()}


@contextlib.contextmanager
def _fake_torch():
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # never called: only its name is pickled
        raise AssertionError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    storage_types = {}
    for name in pth.STORAGE_DTYPES:
        cls = type(name, (), {"__module__": "torch", "__qualname__": name})
        setattr(torch, name, cls)
        storage_types[name] = cls
    torch._utils = utils
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
    try:
        yield utils._rebuild_tensor_v2, storage_types
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class _Tensor:
    def __init__(self, key, array, offset, shape, strides):
        self.key, self.array, self.offset, self.shape, self.strides = key, array, offset, shape, strides


def _prepare(state: dict[str, np.ndarray], *, offset_pad: int = 0):
    """One storage per tensor, optionally with leading padding so storage offsets are exercised."""
    tensors = {}
    for i, (name, value) in enumerate(state.items()):
        value = np.ascontiguousarray(value)
        flat = value.reshape(-1).astype(value.dtype.newbyteorder("<"))
        storage = np.concatenate([np.zeros(offset_pad, flat.dtype), flat])
        strides = tuple(s // value.itemsize for s in value.strides)
        tensors[name] = _Tensor(str(i), storage, offset_pad, value.shape, strides)
    return tensors


def _pickle(obj_tensors, rebuild, storage_types, *, legacy: bool) -> bytes:
    class P(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _StorageRef):
                cls = storage_types[_STORAGE_NAMES[obj.array.dtype.str]]
                pid = ("storage", cls, obj.key, "cpu", obj.array.size)
                return pid + (None,) if legacy else pid
            return None

        def reducer_override(self, obj):
            if isinstance(obj, _Tensor):
                return rebuild, (_StorageRef(obj.key, obj.array), obj.offset, obj.shape, obj.strides, False, {})
            return NotImplemented

    buf = io.BytesIO()
    P(buf, protocol=2).dump(obj_tensors)
    return buf.getvalue()


class _StorageRef:
    def __init__(self, key, array):
        self.key, self.array = key, array


def save_zip(state: dict[str, np.ndarray], path, *, offset_pad: int = 3) -> None:
    tensors = _prepare(state, offset_pad=offset_pad)
    with _fake_torch() as (rebuild, storage_types):
        data = _pickle(dict(tensors), rebuild, storage_types, legacy=False)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")
        for t in tensors.values():
            zf.writestr(f"archive/data/{t.key}", t.array.tobytes())


def save_legacy(state: dict[str, np.ndarray], path, *, offset_pad: int = 3) -> None:
    tensors = _prepare(state, offset_pad=offset_pad)
    out = io.BytesIO()
    for header in (pth.LEGACY_MAGIC, pth.LEGACY_PROTOCOL, {"little_endian": True}):
        pickle.dump(header, out, protocol=2)
    with _fake_torch() as (rebuild, storage_types):
        out.write(_pickle(dict(tensors), rebuild, storage_types, legacy=True))
    keys = [t.key for t in tensors.values()]
    pickle.dump(keys, out, protocol=2)
    for t in tensors.values():
        out.write(struct.pack("<q", t.array.size))
        out.write(t.array.tobytes())
    with open(path, "wb") as f:
        f.write(out.getvalue())
