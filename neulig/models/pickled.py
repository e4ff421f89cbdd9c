"""Whole-module checkpoints read as data: a restricted unpickler for ``torch.load``.

The task-vectors code (Ilharco et al., "Editing models with task arithmetic", arXiv 2212.04089) and
the Neural Ligand reference code save ``zeroshot.pt`` and ``<Dataset>/finetuned.pt`` as
``torch.save`` of a whole ``ImageEncoder`` module (attribute ``model``: an open_clip CLIP, often
without its text transformer), sometimes of an ``ImageClassifier`` (``image_encoder`` +
``classification_head``). Plain ``torch.load`` runs whatever such a pickle names; ``weights_only=True``
refuses it. :func:`load_pickled` reads it without running anything from the file:

- **globals** (GLOBAL, STACK_GLOBAL, INST): the names in torch's own ``weights_only`` allowlist
  (tensor, storage and parameter rebuilders, dtypes, ``OrderedDict``, ``set``, ...) resolve to those
  objects; every other name becomes an inert :class:`GlobalRef` token. No module is ever imported.
- **instantiation** (NEWOBJ, NEWOBJ_EX, INST/OBJ without arguments, and ``copyreg._reconstructor`` /
  ``copyreg.__newobj__`` for protocols 0-1): a token class gives a :class:`PickledObject`, a record of
  the class name and the pickled state; its ``__new__``, ``__init__`` and ``__setstate__`` never run.
  An ``nn.Module`` pickle so becomes a record of ``_parameters``, ``_buffers`` and ``_modules``.
- **calls** (REDUCE, INST/OBJ with arguments): only allowlisted torch callables are called. Calling a
  token is refused before the call with a one-line :class:`NeuligError` naming the global and the
  file, also when an allowlisted torch function would call its argument (the token's ``__call__``
  refuses). A few pure data types (:data:`INERT_CALLS`, e.g. torchvision's ``InterpolationMode`` in
  the pickled preprocessing) become records instead of being called.
- **BUILD, APPEND(S), SETITEM(S), ADDITEMS** act only on records, tensors, parameters and plain
  containers; the extension-registry opcodes (EXT1/2/4) are refused.

Both of torch's formats pass through the same unpickler (``torch.load`` hands it every pickle it
reads: the zip archive's ``data.pkl``, and the legacy format's header, storage and object pickles; the
legacy format's ``('module', class, source)`` ids only name the class, whose source is not compared).
"""
from __future__ import annotations

import _compat_pickle
import functools
import pickle
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch

from neulig.errors import NeuligError, unreadable

StateDict = dict[str, torch.Tensor]

# Classes whose pickles call them with plain data (enums, numpy scalars and arrays): recorded, never called.
INERT_CALLS = frozenset({
    "torchvision.transforms.functional.InterpolationMode",
    "torchvision.transforms.InterpolationMode",
    "PIL.Image.Resampling",
    "numpy.dtype",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
})
MODULE_KEYS = ("_parameters", "_buffers", "_modules")
MODULE_IDS = ("module", b"module")  # the legacy format's persistent ids of module classes


def refused(name: str, where: str) -> NeuligError:
    """The one-line error for a pickle that would call ``name`` (``module.name``) while loading."""
    return NeuligError(f"checkpoint {where} would call {name} when unpickled; refused before the call, nothing "
                       "from the file was run: use a state dict or safetensors file of the model instead")


class GlobalRef:
    """A global the pickle names (``module.name``), never imported; calling it is refused."""

    __slots__ = ("name", "where")

    def __init__(self, name: str, where: str) -> None:
        self.name, self.where = name, where

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise refused(self.name, self.where)

    def __repr__(self) -> str:
        return f"GlobalRef({self.name!r})"


class PickledObject:
    """An instance of the pickled class ``cls`` as inert data: constructor arguments, state, items."""

    __slots__ = ("args", "cls", "items", "kwargs", "state")

    def __init__(self, cls: str, args: tuple = (), kwargs: dict | None = None) -> None:
        self.cls, self.args, self.kwargs = cls, args, kwargs or {}
        self.state: Any = None
        self.items: Any = None  # what APPEND(S) / SETITEM(S) added (list or dict subclasses)

    def build(self, state: Any) -> None:
        """BUILD: keep ``state`` (a ``__dict__``, or ``(__dict__, slots)``) without any ``__setstate__``."""
        if isinstance(state, tuple) and len(state) == 2 and all(s is None or isinstance(s, dict) for s in state):
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict) and isinstance(self.state, dict):
            self.state.update(state)
        else:
            self.state = dict(state) if isinstance(state, dict) else state

    def attr(self, name: str, default: Any = None) -> Any:
        return self.state.get(name, default) if isinstance(self.state, dict) else default

    @property
    def is_module(self) -> bool:
        """Whether this was an ``nn.Module`` (its state has ``_parameters``, ``_buffers``, ``_modules``)."""
        return all(isinstance(self.attr(key), Mapping) for key in MODULE_KEYS)

    def add(self, key: Any, value: Any = None, *, mapping: bool) -> None:
        if self.items is None:
            self.items = {} if mapping else []
        if mapping and isinstance(self.items, dict):
            self.items[key] = value
        elif not mapping and isinstance(self.items, list):
            self.items.append(key)
        else:
            raise pickle.UnpicklingError(f"{self.cls} record gets both list and dict items")

    def __repr__(self) -> str:
        return f"PickledObject({self.cls!r})"


@functools.lru_cache(maxsize=1)
def allowed_globals() -> dict[str, Any]:
    """``module.name`` -> object for the globals that may be resolved and called: torch's own
    ``weights_only`` allowlist (tensors, storages, parameters, dtypes, OrderedDict, set, ...) and frozenset."""
    from torch._weights_only_unpickler import _get_allowed_globals

    return {**_get_allowed_globals(), "builtins.frozenset": frozenset}


@functools.lru_cache(maxsize=1)
def _allowed_ids() -> frozenset[int]:
    return frozenset(id(obj) for obj in allowed_globals().values())


def _is_allowed(obj: Any) -> bool:
    return id(obj) in _allowed_ids()


def _describe(obj: Any) -> str:
    if isinstance(obj, (GlobalRef, PickledObject)):
        return obj.name if isinstance(obj, GlobalRef) else obj.cls
    return f"{type(obj).__module__}.{type(obj).__qualname__} object"


class SafeUnpickler(pickle._Unpickler):
    """Python's unpickler with every opcode that resolves, creates or calls something replaced."""

    where = "<pickle>"
    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: Any, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._torch_persistent_load: Callable[[Any], Any] | None = None

    # torch assigns ``unpickler.persistent_load``; the legacy format's module ids are answered here.
    @property
    def persistent_load(self) -> Callable[[Any], Any]:
        return self._persistent_load

    @persistent_load.setter
    def persistent_load(self, function: Callable[[Any], Any]) -> None:
        self._torch_persistent_load = function

    def _persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) > 1 and isinstance(pid[0], (str, bytes)) and pid[0] in MODULE_IDS:
            return pid[1]  # legacy format: ('module', class, source file, source); the class is a token
        if self._torch_persistent_load is None:
            raise pickle.UnpicklingError("persistent id outside a torch checkpoint")
        return self._torch_persistent_load(pid)

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and self.fix_imports:
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        full = f"{module}.{name}"
        allowed = allowed_globals()
        return allowed[full] if full in allowed else GlobalRef(full, self.where)

    # ---- instantiation and calls ----------------------------------------------------------------

    def _new(self, cls: Any, args: tuple, kwargs: dict) -> Any:
        if isinstance(cls, GlobalRef):
            return PickledObject(cls.name, tuple(args), dict(kwargs))
        if cls is torch.nn.Parameter:
            return torch.nn.Parameter(*args, **kwargs)
        if isinstance(cls, type) and _is_allowed(cls):
            return cls.__new__(cls, *args, **kwargs)
        raise refused(f"{_describe(cls)}.__new__", self.where)

    def _call(self, func: Any, args: tuple) -> Any:
        if isinstance(func, GlobalRef):
            if func.name == "copyreg._reconstructor" and len(args) == 3:  # protocols 0-1: (cls, base, state)
                return self._new(args[0], () if args[2] is None else (args[2],), {})
            if func.name == "copyreg.__newobj__" and args:
                return self._new(args[0], tuple(args[1:]), {})
            if func.name == "copyreg.__newobj_ex__" and len(args) == 3:
                return self._new(args[0], tuple(args[1]), dict(args[2]))
            if func.name in INERT_CALLS:
                return PickledObject(func.name, tuple(args))
            raise refused(func.name, self.where)
        if _is_allowed(func):
            return func(*args)
        raise refused(_describe(func), self.where)

    def load_reduce(self) -> None:
        args = self.stack.pop()
        if not isinstance(args, tuple):
            raise pickle.UnpicklingError("REDUCE arguments are not a tuple")
        self.stack[-1] = self._call(self.stack[-1], args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, tuple(args), {}))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, tuple(args), dict(kwargs)))

    def _instantiate(self, klass: Any, args: list) -> None:  # INST and OBJ (protocols 0-1)
        self.append(self._new(klass, (), {}) if not args else self._call(klass, tuple(args)))

    def load_inst(self) -> None:
        module = self.readline()[:-1].decode("ascii")
        name = self.readline()[:-1].decode("ascii")
        self._instantiate(self.find_class(module, name), self.pop_mark())

    def load_obj(self) -> None:
        args = self.pop_mark()
        cls = args.pop(0)
        self._instantiate(cls, args)

    # ---- state and container items --------------------------------------------------------------

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, PickledObject):
            inst.build(state)
        elif type(inst) is torch.Tensor and isinstance(state, tuple):  # legacy tensors, as weights_only
            inst.set_(*state)
        elif type(inst) is torch.nn.Parameter:
            inst.__setstate__(state)
        elif type(inst) is OrderedDict and isinstance(state, dict):
            inst.__dict__.update(state)
        else:
            raise refused(f"{_describe(inst)}.__setstate__", self.where)

    def load_append(self) -> None:
        value = self.stack.pop()
        self._extend(self.stack[-1], [value])

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._extend(self.stack[-1], items)

    def _extend(self, target: Any, items: list) -> None:
        if type(target) is list:
            target.extend(items)
        elif isinstance(target, PickledObject):
            for item in items:
                target.add(item, mapping=False)
        else:
            raise refused(f"{_describe(target)}.append", self.where)

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._set_items(self.stack[-1], [key, value])

    def load_setitems(self) -> None:
        items = self.pop_mark()
        self._set_items(self.stack[-1], items)

    def _set_items(self, target: Any, items: list) -> None:
        pairs = zip(items[::2], items[1::2], strict=True)
        if type(target) in (dict, OrderedDict, Counter):
            for key, value in pairs:
                target[key] = value
        elif isinstance(target, PickledObject):
            for key, value in pairs:
                target.add(key, value, mapping=True)
        else:
            raise refused(f"{_describe(target)}.__setitem__", self.where)

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise refused(f"{_describe(target)}.add", self.where)
        target.update(items)

    def load_ext(self) -> None:
        raise refused("copyreg extension registry", self.where)

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.INST[0]] = load_inst
    dispatch[pickle.OBJ[0]] = load_obj
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.APPEND[0]] = load_append
    dispatch[pickle.APPENDS[0]] = load_appends
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.ADDITEMS[0]] = load_additems
    for _ext in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_ext[0]] = load_ext
    del _ext


class SafePickleModule:
    """The ``pickle_module`` handed to ``torch.load``: its ``Unpickler`` and ``load`` are :class:`SafeUnpickler`."""

    __name__ = "neulig.models.pickled"

    def __init__(self, where: str) -> None:
        self.Unpickler = type("Unpickler", (SafeUnpickler,), {"where": where})

    def load(self, file: Any, **kwargs: Any) -> Any:
        return self.Unpickler(file, **kwargs).load()


def load_pickled(path: Path, where: str | None = None) -> Any:
    """The object ``torch.save``-d in ``path``, every class in it a :class:`PickledObject` and every
    other unknown global a :class:`GlobalRef`; tensors are real (on the CPU). ``where`` names the file
    in errors (default: its path)."""
    where = where or str(path)
    try:
        return torch.load(path, map_location="cpu", pickle_module=SafePickleModule(where), weights_only=False)
    except NeuligError:
        raise
    except Exception as err:  # every reader's error means the same to the user
        raise unreadable(f"checkpoint {where}", err, "it may be truncated or not a torch checkpoint: export it again") from err


def _tensor(value: Any, key: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise NeuligError(f"pickled module entry {key!r} is a {_describe(value)}, not a tensor")
    return value.detach()


def flat_state(obj: Any, prefix: str = "", _path: frozenset[int] = frozenset()) -> StateDict:
    """The state dict of a pickled object, as ``nn.Module.state_dict()`` would give it: for a module
    record its parameters, persistent buffers and submodules (recursively, ``name.`` prefixes); for a
    mapping its tensors and, under ``key.``, its nested mappings and module records. Other values
    (epochs, arguments, preprocessing) are left out. A module or mapping that contains itself is an error."""
    if id(obj) in _path:
        raise NeuligError(f"the pickle contains itself under {prefix[:-1]!r}; it is not a model checkpoint")
    _path = _path | {id(obj)}
    out: StateDict = {}
    if isinstance(obj, PickledObject) and obj.is_module:
        skip = obj.attr("_non_persistent_buffers_set") or ()
        for name, value in obj.attr("_parameters").items():
            if value is not None:
                out[f"{prefix}{name}"] = _tensor(value, f"{prefix}{name}")
        for name, value in obj.attr("_buffers").items():
            if value is not None and name not in skip:
                out[f"{prefix}{name}"] = _tensor(value, f"{prefix}{name}")
        for name, child in obj.attr("_modules").items():
            if child is not None:
                out.update(flat_state(child, f"{prefix}{name}.", _path))
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            if isinstance(value, torch.Tensor):
                out[f"{prefix}{key}"] = value.detach()
            elif isinstance(value, Mapping) or (isinstance(value, PickledObject) and value.is_module):
                out.update(flat_state(value, f"{prefix}{key}.", _path))
    return out


def read_pickled_state(path: Path, where: str | None = None) -> StateDict:
    """The flat state dict in a ``torch.save`` of a whole module (or of a mapping holding modules or
    tensors), read without running anything from the file; one-line error when it holds no tensor."""
    where = where or str(path)
    obj = load_pickled(path, where)
    try:
        state = flat_state(obj)
    except NeuligError as err:
        raise NeuligError(f"checkpoint {where}: {err}") from None
    if not state:
        raise NeuligError(f"checkpoint {where} holds a {_describe(obj)} with no tensors; give a model checkpoint")
    return state
