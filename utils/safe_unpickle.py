"""Read a torch zip checkpoint from an untrusted file without running any of its code.

``read_torch_zip`` opens the zip itself (no ``torch.load``: that would dispatch TorchScript archives to
``torch.jit.load`` and read the legacy format through torch's ``'module'`` persistent id) and unpickles
``data.pkl`` with ``SafeUnpickler``, a pure-Python unpickler whose every opcode that calls, builds or mutates is
checked:

- globals resolve only to an allow-list of containers and wrapper functions below; module classes under YOLOv5's
  packages become inert ``Record`` instances (a per-load class cache, so nothing outlives the load);
- calls (REDUCE, NEWOBJ, ...) may only target those allow-listed callables;
- BUILD (``__setstate__`` / ``__dict__`` / ``setattr``) is allowed only on records and numpy arrays/dtypes this
  unpickler created itself, never on a class, function or shared object, so a file cannot change process state;
- APPEND/SETITEM/ADDITEMS only on real lists, dicts and sets;
- storages come from the zip's own records with exactly the byte size the pickle claims, and every tensor view is
  checked against its storage before it exists, so a few bytes cannot claim gigabytes.
Every refusal is a ``pickle.UnpicklingError`` with a one-line message.
"""
from __future__ import annotations

import _codecs
import collections
import io
import math
import os
import pickle
import re
import sys
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

_np_multiarray = getattr(getattr(np, "_core", None), "multiarray", None) or np.core.multiarray
_NUMERIC_DTYPE = re.compile(r"[biufc]\d{1,2}")  # 'f8', 'i8', 'b1', ...: numbers only, never objects or strings
_MAX_NDIM = 64
_ARCHIVE_LIMIT = 100_000  # zip entries; a torch checkpoint has one per storage plus a handful


class Record:
    """Stand-in for a pickled class instance: keeps its state and class name, does nothing else."""
    qualname = "?"

    def __setstate__(self, state):
        self.__dict__["_state"] = state if isinstance(state, dict) else {"_raw": state}

    def __getattr__(self, item):
        if item.startswith("__"):  # no dunder lookups (copy, pickle protocols) read file data
            raise AttributeError(item)
        try:
            return self.__dict__["_state"][item]
        except KeyError:
            raise AttributeError(item) from None


class Storage(NamedTuple):
    """A storage read from the zip: raw bytes and the element type the pickle gave them."""
    untyped: torch.UntypedStorage
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return self.untyped.nbytes() // torch._utils._element_size(self.dtype)


class _StorageType(NamedTuple):
    """What ``torch.FloatStorage`` etc. resolve to: only their dtype matters."""
    dtype: torch.dtype


def _refuse(msg: str):
    raise pickle.UnpicklingError(msg)


def _is_int(x, lo: int = 0) -> bool:
    return type(x) is int and x >= lo


def _check_view(storage, offset, size, stride) -> None:
    """Refuse a tensor view that reaches past its storage or claims more elements than the storage holds."""
    if not isinstance(storage, Storage):
        _refuse("tensor record without a storage from this file")
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride) <= _MAX_NDIM):
        _refuse("tensor record with malformed size/stride")
    if not (_is_int(offset) and all(_is_int(s) for s in size) and all(_is_int(s) for s in stride)):
        _refuse("tensor record with a negative or non-integer size, stride or offset")
    numel, have = math.prod(size), storage.numel
    if numel and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= have:
        _refuse(f"tensor record of size {list(size)[:8]} reaches past its storage of {have} elements")
    if numel > max(have - offset, 0):
        _refuse(f"tensor record claims {numel} elements from a storage of {have} (overlapping/zero strides)")


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None, dtype=None):
    _check_view(storage, offset, size, stride)
    if hooks or metadata:
        _refuse("tensor record with hooks or metadata")
    dtype = storage.dtype if dtype is None else dtype
    if dtype != storage.dtype:
        _refuse("tensor record whose dtype differs from its storage")
    return torch.empty(0, dtype=dtype).set_(storage.untyped, offset, size, stride)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return _rebuild_tensor(storage, offset, size, stride, requires_grad, hooks, metadata)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None):
    """torch writes this for dtypes without a legacy storage class (uint16, float8, ...): bytes of an untyped
    storage viewed as dtype."""
    if isinstance(storage, Storage) and storage.dtype == torch.uint8 and isinstance(dtype, torch.dtype):
        storage = Storage(storage.untyped, dtype)
    return _rebuild_tensor(storage, offset, size, stride, requires_grad, hooks, metadata, dtype)


def _rebuild_parameter(data, requires_grad=True, hooks=None):
    if not isinstance(data, torch.Tensor) or hooks:
        _refuse("parameter record without a tensor, or with hooks")
    return data  # plain tensor: nothing downstream needs the Parameter wrapper


def _encode(text, encoding="latin1", errors="strict"):
    """Protocol 2 spells bytes as _codecs.encode(str, 'latin1'): allow exactly that conversion."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        _refuse("_codecs.encode only turns a str into latin1 bytes here")
    return _codecs.encode(text, "latin1")


def _numeric(d) -> bool:
    return isinstance(d, np.dtype) and not d.hasobject and d.kind in "biufc" and d.fields is None \
        and d.subdtype is None


class SafeUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its opcode table can be replaced
    """Unpickler for untrusted checkpoints (see module docstring)."""

    record_modules = ("models.", "utils.", "yolov5.models.", "yolov5.utils.", "torch.nn.modules.")
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, storages=None):
        super().__init__(file)
        self._storages = storages or (lambda pid: _refuse("persistent ids are not allowed here"))
        self._records: dict[str, type] = {}  # per load: record classes never outlive it
        self._record_types: set[type] = set()
        self._fresh: dict[int, Any] = {}  # numpy objects this load created (kept alive so ids stay unique)
        self._callables = {id(f): f for f in _CALLABLE.values()}

    # ------------------------------------------------------------------ globals
    def find_class(self, module: str, name: str):
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)  # protocol-2 spellings
        if not (isinstance(module, str) and isinstance(name, str)):
            _refuse("malformed global")
        if (module, name) in _CALLABLE:
            return _CALLABLE[(module, name)]
        if (module, name) in _VALUES:
            return _VALUES[(module, name)]
        if module == "torch" and isinstance(vars(torch).get(name), torch.dtype):  # vars: no lazy submodule import
            return vars(torch)[name]
        if module == "torch" and name.endswith("Storage") and name.isidentifier():
            try:
                return _StorageType(torch.serialization.StorageType(name).dtype)
            except (KeyError, AttributeError, RuntimeError):
                pass
        if module.startswith(self.record_modules) and name.isidentifier() and len(name) <= 64 and \
                len(module) <= 128 and all(p.isidentifier() for p in module.split(".")):
            key = f"{module}.{name}"
            if key not in self._records:
                self._records[key] = type(name, (Record,), {"qualname": key, "__module__": __name__})
                self._record_types.add(self._records[key])
            return self._records[key]
        _refuse(f"refusing to load global '{module[:60]}.{name[:60]}' (not on the allow-list)")

    def persistent_load(self, pid):
        return self._storages(pid)

    # ------------------------------------------------------------------ calls
    def _call(self, func, args, kwargs=None):
        if not isinstance(args, tuple) or (kwargs is not None and not isinstance(kwargs, dict)):
            _refuse("malformed call")
        if isinstance(func, type) and func in self._record_types:
            if args or kwargs:
                _refuse(f"record class {func.qualname} called with arguments")
            return func.__new__(func)
        if self._callables.get(id(func)) is not func:
            _refuse(f"refusing to call {getattr(func, '__name__', type(func).__name__)!r} (not on the allow-list)")
        try:
            obj = func(*args, **(kwargs or {}))
        except pickle.UnpicklingError:
            raise
        except Exception as e:  # e.g. numpy rejecting a malformed scalar
            _refuse(f"bad arguments for {getattr(func, '__name__', '?')}: {type(e).__name__}")
        if func in (self._dtype, self._reconstruct) or type(obj) is collections.OrderedDict:
            self._fresh[id(obj)] = obj
        return obj

    def load_reduce(self):
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)
    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._call(cls, args))
    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._call(cls, args, kwargs))
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def _instantiate(self, klass, args):  # INST and OBJ (protocols 0/1)
        self.append(self._call(klass, tuple(args)))

    def _refuse_opcode(self):
        _refuse("pickle extension codes are not allowed")
    for _op in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = _refuse_opcode
    del _op

    # ------------------------------------------------------------------ numpy, built fresh
    @staticmethod
    def _dtype(obj, align=False, copy=True):
        if not (isinstance(obj, str) and _NUMERIC_DTYPE.fullmatch(obj)) or align is not False:
            _refuse(f"numpy dtype {str(obj)[:20]!r} is not a plain number type")
        return np.dtype(obj, False, True)  # always a private copy, so BUILD cannot touch numpy's own dtypes

    @staticmethod
    def _reconstruct(cls, shape, typecode):
        if cls is not np.ndarray or shape != (0,) or typecode != b"b":
            _refuse("numpy array record other than numpy's own empty template")
        return _np_multiarray._reconstruct(np.ndarray, (0,), b"b")

    @staticmethod
    def _scalar(dtype, data=None):
        if not _numeric(dtype) or not isinstance(data, bytes) or len(data) != dtype.itemsize:
            _refuse("numpy scalar record that is not a plain number")
        return _np_multiarray.scalar(dtype, data)

    @staticmethod
    def _frombuffer(buf, dtype, shape, order="C"):  # protocol 5 writes arrays this way
        if not (isinstance(buf, (bytes, bytearray)) and _numeric(dtype) and isinstance(shape, tuple)
                and len(shape) <= _MAX_NDIM and all(_is_int(n) for n in shape) and order in ("C", "F")
                and math.prod(shape) * dtype.itemsize == len(buf)):
            _refuse("numpy array whose data does not match its shape and dtype")
        return np.frombuffer(bytearray(buf), dtype=dtype).reshape(shape, order=order)

    # ------------------------------------------------------------------ state and containers
    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) in self._record_types:
            inst.__setstate__(state)
        elif self._fresh.get(id(inst)) is inst and isinstance(inst, np.dtype):
            if not (isinstance(state, tuple) and len(state) in (8, 9) and state[2:5] == (None, None, None)):
                _refuse("numpy dtype state with fields or sub-arrays")
            inst.__setstate__(state)
            if not _numeric(inst):
                _refuse("numpy dtype that is not a plain number type")
        elif self._fresh.get(id(inst)) is inst and type(inst) is np.ndarray:
            self._build_array(inst, state)
        elif self._fresh.get(id(inst)) is inst and type(inst) is collections.OrderedDict:
            self._build_state_dict(inst, state)
        else:
            _refuse(f"refusing to set the state of a {type(inst).__name__} object (only records and arrays)")
    dispatch[pickle.BUILD[0]] = load_build

    @staticmethod
    def _build_state_dict(sd, state) -> None:
        """nn.Module.state_dict() is an OrderedDict carrying one attribute, _metadata (per-module version dicts
        that load_state_dict reads, e.g. BatchNorm's): the only attribute a file may set, and only to plain
        {str: {str: int}} entries."""
        meta = state.get("_metadata") if type(state) is dict and set(state) == {"_metadata"} else None
        if type(meta) not in (dict, collections.OrderedDict) or not all(
                type(k) is str and type(v) in (dict, collections.OrderedDict)
                and all(type(a) is str and type(b) is int for a, b in v.items()) for k, v in meta.items()):
            _refuse("OrderedDict state other than a state_dict's plain _metadata version records")
        sd._metadata = meta

    def _build_array(self, arr, state) -> None:
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
            _refuse("numpy array state of an unknown layout")
        _, shape, dtype, fortran, data = state
        if not (isinstance(shape, tuple) and len(shape) <= _MAX_NDIM and all(_is_int(n) for n in shape)):
            _refuse("numpy array with a malformed shape")
        if self._fresh.get(id(dtype)) is not dtype or not _numeric(dtype) or not isinstance(data, bytes) or \
                math.prod(shape) * dtype.itemsize != len(data) or type(fortran) is not bool:
            _refuse("numpy array whose data does not match its shape and dtype")
        arr.__setstate__(state)

    def load_append(self):
        value = self.stack.pop()
        if type(self.stack[-1]) is not list:
            _refuse("APPEND to something other than a list")
        self.stack[-1].append(value)
    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self):
        items = self.pop_mark()
        if type(self.stack[-1]) is not list:
            _refuse("APPENDS to something other than a list")
        self.stack[-1].extend(items)
    dispatch[pickle.APPENDS[0]] = load_appends

    def load_setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        if type(self.stack[-1]) not in (dict, collections.OrderedDict):
            _refuse("SETITEM on something other than a dict")
        self.stack[-1][key] = value
    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self):
        items = self.pop_mark()
        d = self.stack[-1]
        if type(d) not in (dict, collections.OrderedDict):
            _refuse("SETITEMS on something other than a dict")
        for i in range(0, len(items), 2):
            d[items[i]] = items[i + 1]
    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_additems(self):
        items = self.pop_mark()
        if type(self.stack[-1]) is not set:
            _refuse("ADDITEMS on something other than a set")
        self.stack[-1].update(items)
    dispatch[pickle.ADDITEMS[0]] = load_additems


# Callables a file may invoke (REDUCE etc.); each builds a plain value from plain arguments and nothing else.
_CALLABLE = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "dict"): dict,
    ("builtins", "list"): list, ("builtins", "tuple"): tuple, ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch", "Size"): torch.Size, ("torch", "device"): torch.device,
    ("_codecs", "encode"): _encode,
    ("numpy", "dtype"): SafeUnpickler._dtype,
    ("numpy.core.multiarray", "scalar"): SafeUnpickler._scalar,
    ("numpy._core.multiarray", "scalar"): SafeUnpickler._scalar,
    ("numpy.core.multiarray", "_reconstruct"): SafeUnpickler._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): SafeUnpickler._reconstruct,
    ("numpy.core.numeric", "_frombuffer"): SafeUnpickler._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): SafeUnpickler._frombuffer,
    ("pathlib", "PosixPath"): Path, ("pathlib", "WindowsPath"): Path, ("pathlib", "Path"): Path,
    ("pathlib._local", "PosixPath"): Path, ("pathlib._local", "WindowsPath"): Path,
}
# Globals a file may only pass around as arguments.
_VALUES = {("numpy", "ndarray"): np.ndarray, ("torch", "UntypedStorage"): torch.UntypedStorage,
           ("torch.storage", "UntypedStorage"): torch.UntypedStorage}


class _ZipStorages:
    """persistent_load for a torch zip: each storage is its own record, read at exactly the size claimed."""

    def __init__(self, zf: zipfile.ZipFile, prefix: str, swap: bool):
        self.zf, self.prefix, self.swap = zf, prefix, swap
        self.sizes = {i.filename: i.file_size for i in zf.infolist()}
        self.cache: dict[str, Storage] = {}

    def __call__(self, pid) -> Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            _refuse(f"persistent id {str(pid[0] if isinstance(pid, tuple) and pid else pid)[:20]!r} is not a "
                    "storage (legacy 'module' ids are refused)")
        _, stype, key, _location, numel = pid
        if not (isinstance(stype, _StorageType) or stype is torch.UntypedStorage):
            _refuse("storage record of an unknown type")
        dtype = torch.uint8 if stype is torch.UntypedStorage else stype.dtype
        if not (isinstance(key, str) and key.isalnum() and _is_int(numel)):
            _refuse("malformed storage record")
        if key in self.cache:
            return self.cache[key] if self.cache[key].dtype == dtype else _refuse("storage reused with another dtype")
        name, nbytes = f"{self.prefix}data/{key}", numel * torch._utils._element_size(dtype)
        if self.sizes.get(name) != nbytes:
            _refuse(f"storage {key} claims {nbytes} bytes but the file holds {self.sizes.get(name, 0)}")
        data = self.zf.read(name)  # CRC-checked by zipfile
        st = torch.UntypedStorage.from_buffer(data, dtype=torch.uint8) if nbytes else torch.UntypedStorage(0)
        if self.swap and torch._utils._element_size(dtype) > 1:
            st.byteswap(dtype)
        self.cache[key] = Storage(st, dtype)
        return self.cache[key]


def is_torchscript(zf: zipfile.ZipFile) -> bool:
    return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in zf.namelist())


def read_torch_zip(path: Path) -> Any:
    """Unpickle a torch.save zip checkpoint safely. Raises zipfile.BadZipFile for non-zip files and
    pickle.UnpicklingError (one line) for anything refused."""
    file_size = os.path.getsize(path)
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        if len(infos) > _ARCHIVE_LIMIT:
            _refuse(f"zip with {len(infos)} entries")
        if is_torchscript(zf):
            _refuse("it is a TorchScript archive, not a checkpoint")
        if sum(i.file_size for i in infos) > file_size or any(i.compress_type != zipfile.ZIP_STORED for i in infos):
            _refuse("zip entries claim more bytes than the file holds (compressed or overlapping entries)")
        pkls = [i.filename for i in infos if i.filename.endswith("data.pkl") and i.filename.count("/") == 1]
        if len(pkls) != 1:
            _refuse("zip without exactly one <archive>/data.pkl (not a torch.save checkpoint)")
        prefix = pkls[0][: -len("data.pkl")]
        order = zf.read(prefix + "byteorder").decode("ascii", "replace") if prefix + "byteorder" in zf.namelist() \
            else "little"
        if order not in ("little", "big"):
            _refuse("unknown byteorder record")
        storages = _ZipStorages(zf, prefix, swap=order != sys.byteorder)
        return SafeUnpickler(io.BytesIO(zf.read(pkls[0])), storages).load()


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.save's first pickle before the zip format (torch < 1.6)
LEGACY_PROTOCOL = 1001


class _LegacyStorages:
    """persistent_load for torch's legacy (pre-1.6) stream: storages are declared in the main pickle and their bytes
    follow it, so each is allocated only while the claimed bytes still fit in what is left of the file."""

    def __init__(self, budget: int):
        self.budget = budget
        self.cache: dict[str, Storage] = {}

    def __call__(self, pid) -> Storage:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] in ("storage", b"storage")):
            _refuse("legacy persistent id that is not a plain storage ('module' ids carry source code)")
        _, stype, key, _location, numel, view = pid
        if view is not None:
            _refuse("legacy storage view records are not supported")
        if not isinstance(stype, _StorageType) or not (isinstance(key, str) and key.isalnum() and _is_int(numel)):
            _refuse("malformed legacy storage record")
        if key in self.cache:
            same = self.cache[key].dtype == stype.dtype
            return self.cache[key] if same else _refuse("storage reused with another dtype")
        nbytes = numel * torch._utils._element_size(stype.dtype)
        if nbytes + 8 > self.budget:
            _refuse(f"storage {key} claims {nbytes} bytes but the file holds fewer")
        self.budget -= nbytes + 8
        self.cache[key] = Storage(torch.UntypedStorage(nbytes), stype.dtype)
        return self.cache[key]


def read_torch_legacy(path: Path) -> Any:
    """Unpickle a legacy (pre-zip) torch.save file safely: magic, protocol and system-info pickles, the object
    (through SafeUnpickler), the list of storage keys, then each storage as an 8-byte little-endian element count and
    its bytes. Many published ImageNet files (e.g. torchvision's 2018-2020 ones) are in this format."""
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        header = [SafeUnpickler(f).load() for _ in range(3)]
        if header[0] != LEGACY_MAGIC or header[1] != LEGACY_PROTOCOL or not isinstance(header[2], dict):
            _refuse("not a torch.save file (neither a zip nor the legacy format)")
        if header[2].get("little_endian", True) is not True:
            _refuse("big-endian legacy files are not supported")
        storages = _LegacyStorages(file_size - f.tell())
        obj = SafeUnpickler(f, storages).load()
        keys = SafeUnpickler(f).load()
        if not (isinstance(keys, list) and sorted(keys) == sorted(storages.cache) and len(set(keys)) == len(keys)):
            _refuse("legacy storage key list does not match the storages the object uses")
        for key in keys:
            st = storages.cache[key]
            count = int.from_bytes(f.read(8), "little")
            nbytes = st.untyped.nbytes()
            if count * torch._utils._element_size(st.dtype) != nbytes:
                _refuse(f"storage {key}: {count} elements recorded where {st.numel} were declared")
            data = f.read(nbytes)
            if len(data) != nbytes:
                _refuse(f"storage {key}: the file ends inside its data")
            if nbytes:
                st.untyped.copy_(torch.UntypedStorage.from_buffer(data, dtype=torch.uint8))
    return obj


def read_torch_file(path: Path) -> Any:
    """read_torch_zip for zip checkpoints, read_torch_legacy for the older stream format."""
    return read_torch_zip(path) if zipfile.is_zipfile(path) else read_torch_legacy(path)
