"""The only calls a checkpoint's pickle may make: tensors rebuilt from checked storages, and a few
plain containers (docs/security.md).

torch's pickles rebuild a tensor as ``_rebuild_tensor_v2(storage, offset, size, stride, ...)``. Here
every such call makes a dense strided CPU tensor of a dtype in :data:`ALLOWED_DTYPES`, and only after its
sizes, strides and offset were checked to stay inside the bytes actually read for its storage (a view of
them, nothing copied) and its numel x element size was counted in the file's :class:`Budget`. Sparse,
meta, nested, quantized and device tensors and Tensor subclasses are refused in one line
(:data:`REFUSED_KINDS`). The container constructors take only what a checkpoint holds: ``OrderedDict``
of pairs, ``set`` of a list, ``bytearray`` of bytes (never of a size), ``_codecs.encode`` of latin-1 text.
"""
from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from math import prod
from typing import Any

import torch

from neulig.errors import NeuligError
from neulig.models.read_limits import Budget

ALLOWED_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
                            torch.int16, torch.int8, torch.uint8, torch.bool})
MAX_DIMS = 64

# Rebuilders of tensors we never read -> what they make (for the one-line refusal).
REFUSED_KINDS = {
    "torch._utils._rebuild_sparse_tensor": "a sparse tensor",
    "torch._utils._rebuild_meta_tensor_no_storage": "a meta tensor (shapes without data)",
    "torch._utils._rebuild_nested_tensor": "a nested tensor",
    "torch._utils._rebuild_qtensor": "a quantized tensor",
    "torch._utils._rebuild_wrapper_subclass": "a Tensor subclass",
    "torch._utils._rebuild_device_tensor_from_numpy": "a device tensor",
    "torch._utils._rebuild_device_tensor_from_cpu_tensor": "a device tensor",
    "torch._utils._rebuild_xla_tensor": "an XLA tensor",
    "torch._utils._rebuild_mtia_tensor": "an MTIA tensor",
    "torch.serialization._get_layout": "a sparse tensor (a non-strided layout)",
}


def refused(name: str, where: str) -> NeuligError:
    """The one-line error for a pickle that would call ``name`` (``module.name``) while loading."""
    return NeuligError(f"checkpoint {where} would call {name} when unpickled; refused before the call, nothing "
                       "from the file was run: use a state dict or safetensors file of the model instead")


def bad_tensor(where: str, what: str) -> NeuligError:
    """The one line for a tensor that is not read."""
    return NeuligError(f"checkpoint {where} holds {what}; only dense CPU tensors inside their storage's bytes "
                       f"({', '.join(sorted(str(d).removeprefix('torch.') for d in ALLOWED_DTYPES))}) are read: "
                       "save a state dict of plain tensors")


@dataclass(frozen=True)
class StorageType:
    """A storage class named by the pickle (``torch.FloatStorage``, ``torch.UntypedStorage``): its dtype."""

    name: str
    dtype: torch.dtype


@dataclass(frozen=True)
class Storage:
    """One storage of the file: ``data`` (uint8, 1-D) views the bytes read for it, of ``dtype`` elements."""

    key: str
    dtype: torch.dtype
    data: torch.Tensor


STORAGE_DTYPES = {"Float": torch.float32, "Double": torch.float64, "Half": torch.float16, "BFloat16": torch.bfloat16,
                  "Long": torch.int64, "Int": torch.int32, "Short": torch.int16, "Char": torch.int8,
                  "Byte": torch.uint8, "Bool": torch.bool}


def storage_types() -> dict[str, StorageType]:
    """``module.name`` -> :class:`StorageType` for the storage classes of the allowed dtypes."""
    out = {f"torch.{name}Storage": StorageType(f"torch.{name}Storage", dtype) for name, dtype in STORAGE_DTYPES.items()}
    return {**out, **{name: StorageType(name, torch.uint8) for name in ("torch.UntypedStorage",
                                                                         "torch.storage.UntypedStorage")}}


def _ints(value: Any, what: str, where: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list, torch.Size)) or len(value) > MAX_DIMS or \
            not all(type(v) is int and 0 <= v < 1 << 62 for v in value):  # torch's sizes are int64
        raise bad_tensor(where, f"a tensor whose {what} is {str(value)[:80]} (not up to {MAX_DIMS} integers "
                                "from 0 to 2^62)")
    return tuple(value)


def checked_tensor(budget: Budget, storage: Any, offset: Any, size: Any, stride: Any,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """``storage``'s elements from ``offset`` with ``size`` and ``stride``, a view of the bytes read, after
    checking that every element lies inside them and counting the tensor's bytes in ``budget``."""
    where = budget.where
    if not isinstance(storage, Storage):
        raise bad_tensor(where, f"a tensor on a storage that is a {type(storage).__name__}")
    dtype = storage.dtype if dtype is None else dtype
    if dtype not in ALLOWED_DTYPES:
        raise bad_tensor(where, f"a tensor of dtype {dtype}")
    size, stride = _ints(size, "size", where), _ints(stride, "stride", where)
    if len(size) != len(stride) or type(offset) is not int or offset < 0:
        raise bad_tensor(where, f"a tensor of size {size}, stride {stride}, offset {offset}")
    itemsize = dtype.itemsize
    available = storage.data.numel() // itemsize
    numel = prod(size)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) if numel else offset - 1
    if last >= available or storage.data.numel() % itemsize:
        raise bad_tensor(where, f"a tensor of size {size}, stride {stride}, offset {offset} reaching element {last} "
                                f"of a storage of {available} {dtype} elements")
    budget.spend(numel * itemsize, f"a tensor of size {size}", "tensor")
    flat = storage.data.view(dtype)
    if dtype is torch.bool and bool((storage.data > 1).any()):
        raise bad_tensor(where, "a bool tensor with bytes other than 0 and 1")
    return torch.as_strided(flat, size, stride, flat.storage_offset() + offset)


def _no_metadata(where: str, metadata: Any) -> None:
    if metadata:
        raise bad_tensor(where, f"a tensor with metadata {str(metadata)[:80]}")


def _tensor_v1(budget: Budget, storage: Any, offset: Any, size: Any, stride: Any) -> torch.Tensor:
    return checked_tensor(budget, storage, offset, size, stride)


def _tensor_v2(budget: Budget, storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
               backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    _no_metadata(budget.where, metadata)
    return checked_tensor(budget, storage, offset, size, stride)


def _tensor_v3(budget: Budget, storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any,
               backward_hooks: Any, dtype: Any, metadata: Any = None) -> torch.Tensor:
    _no_metadata(budget.where, metadata)
    if not isinstance(dtype, torch.dtype):
        raise bad_tensor(budget.where, f"a tensor of dtype {getattr(dtype, 'name', str(dtype)[:40])}")
    return checked_tensor(budget, storage, offset, size, stride, dtype)


def _plain(budget: Budget, data: Any) -> torch.Tensor:
    if type(data) is not torch.Tensor:  # made by a rebuilder above, never a subclass
        raise bad_tensor(budget.where, f"a parameter whose data is a {type(data).__name__}")
    return data


def _parameter(budget: Budget, data: Any, requires_grad: Any = True, backward_hooks: Any = None,
               state: Any = None) -> torch.nn.Parameter:
    if state:
        raise bad_tensor(budget.where, "a parameter with Python attributes (a Parameter subclass?)")
    return torch.nn.Parameter(_plain(budget, data), requires_grad=bool(requires_grad))


TENSOR_TYPES = {"torch.Tensor": torch.Tensor, "torch._tensor.Tensor": torch.Tensor}
REBUILDERS: dict[str, Callable[..., Any]] = {
    "torch._utils._rebuild_tensor": _tensor_v1,
    "torch._utils._rebuild_tensor_v2": _tensor_v2,
    "torch._utils._rebuild_tensor_v3": _tensor_v3,
    "torch._utils._rebuild_parameter": _parameter,
    "torch._utils._rebuild_parameter_with_state": _parameter,
}


def _from_type(budget: Budget, func: Any, new_type: Any, args: Any, state: Any) -> torch.Tensor:
    """``_rebuild_from_type_v2``: a plain tensor or parameter from one of :data:`REBUILDERS`, no attributes."""
    parameter = isinstance(new_type, Allowed) and new_type.fn is _parameter
    if new_type is not torch.Tensor and not parameter:
        raise bad_tensor(budget.where, f"a Tensor subclass ({getattr(new_type, 'name', type(new_type).__name__)})")
    if state:
        raise bad_tensor(budget.where, "a tensor with Python attributes")
    if not isinstance(func, Allowed):  # os.system smuggled in as the rebuilder
        raise refused(getattr(func, "name", type(func).__name__), budget.where)
    if func.fn not in REBUILDERS.values() or not isinstance(args, tuple):
        raise bad_tensor(budget.where, "a tensor rebuilt by something other than torch's tensor rebuilders")
    tensor = func.fn(budget, *args)
    return _parameter(budget, tensor) if parameter and type(tensor) is torch.Tensor else tensor


def _ordered_dict(budget: Budget, pairs: Any = ()) -> OrderedDict:
    if not isinstance(pairs, (list, tuple)):
        raise TypeError("OrderedDict of something other than a list of pairs")
    return OrderedDict(pairs)


def _set_of(kind: type) -> Callable[..., Any]:
    def make(budget: Budget, items: Any = ()) -> Any:
        if not isinstance(items, (list, tuple)):  # never iterate a tensor or anything lazy
            raise TypeError(f"{kind.__name__} of a {type(items).__name__}")
        return kind(items)
    return make


def _bytearray(budget: Budget, data: Any = b"") -> bytearray:
    if not isinstance(data, bytes):  # bytearray(2_200_000_000) asks for 2 GB from 40 bytes
        raise TypeError(f"bytearray of a {type(data).__name__}, not of bytes")
    return bytearray(data)


def _encode(budget: Budget, text: Any, encoding: Any = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise TypeError("_codecs.encode of something other than latin-1 text (how protocol 2 pickles bytes)")
    return text.encode("latin1")


def _device(budget: Budget, kind: Any, index: Any = None) -> torch.device:
    if not isinstance(kind, str) or not (index is None or type(index) is int):
        raise TypeError("torch.device of something other than a name")
    return torch.device(kind) if index is None else torch.device(kind, index)


def _size(budget: Budget, dims: Any = ()) -> torch.Size:
    return torch.Size(_ints(dims, "size", budget.where))


CONTAINERS: dict[str, Callable[..., Any]] = {
    "collections.OrderedDict": _ordered_dict,
    "builtins.set": _set_of(set),
    "builtins.frozenset": _set_of(frozenset),
    "builtins.bytearray": _bytearray,
    "_codecs.encode": _encode,
    "torch.device": _device,
    "torch.Size": _size,
    "torch.nn.parameter.Parameter": _parameter,
    "torch.nn.Parameter": _parameter,
    "torch._tensor._rebuild_from_type_v2": _from_type,
}


@dataclass(frozen=True)
class Allowed:
    """A global the pickle may call: ``fn(budget, *args)`` builds the object from checked arguments."""

    name: str
    fn: Callable[..., Any]


@functools.lru_cache(maxsize=1)
def allowed_globals() -> dict[str, Any]:
    """``module.name`` -> what the pickle gets for it: :class:`Allowed` calls, :class:`StorageType` s, the
    tensor classes, the allowed dtypes; every other name stays an inert token."""
    out: dict[str, Any] = {name: Allowed(name, fn) for name, fn in {**REBUILDERS, **CONTAINERS}.items()}
    out.update(storage_types())
    out.update({f"torch.{str(d).removeprefix('torch.')}": d for d in ALLOWED_DTYPES})
    return {**out, **TENSOR_TYPES}
