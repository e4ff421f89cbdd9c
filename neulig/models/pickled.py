"""Whole-module checkpoints read as data: the restricted unpickler every pickle of a torch file goes through.

The task-vectors code (Ilharco et al., "Editing models with task arithmetic", arXiv 2212.04089) and
the Neural Ligand reference code save ``zeroshot.pt`` and ``<Dataset>/finetuned.pt`` as
``torch.save`` of a whole ``ImageEncoder`` module (attribute ``model``: an open_clip CLIP, often
without its text transformer), sometimes of an ``ImageClassifier`` (``image_encoder`` +
``classification_head``). Plain ``torch.load`` runs whatever such a pickle names; ``weights_only=True``
refuses it. :func:`load_pickled` reads it without running anything from the file
(:mod:`neulig.models.torch_file` reads the file's format; ``torch.load`` is never called):

- **globals** (GLOBAL, STACK_GLOBAL, INST): the names of
  :func:`neulig.models.tensor_rebuild.allowed_globals` (checked tensor rebuilders, storage classes and
  dtypes we read, a few bounded container constructors) resolve to those; every other name becomes an
  inert :class:`GlobalRef` token. No module is ever imported.
- **instantiation** (NEWOBJ, NEWOBJ_EX, INST/OBJ without arguments, and ``copyreg._reconstructor`` /
  ``copyreg.__newobj__`` for protocols 0-1): a token class gives a :class:`PickledObject`, a record of
  the class name and the pickled state; its ``__new__``, ``__init__`` and ``__setstate__`` never run.
  An ``nn.Module`` pickle so becomes a record of ``_parameters``, ``_buffers`` and ``_modules``.
- **calls** (REDUCE, INST/OBJ with arguments): only the allowed functions run, each checking its
  arguments. Calling a token is refused before the call with a one-line :class:`NeuligError` naming
  the global and the file. A few pure data types (:data:`INERT_CALLS`, e.g. torchvision's
  ``InterpolationMode`` in the pickled preprocessing) become records instead of being called.
- **BUILD, APPEND(S), SETITEM(S), ADDITEMS** act only on records and plain containers (BUILD on a
  tensor is refused); the extension-registry opcodes (EXT1/2/4) are refused.
- every opcode counts in the file's :class:`~neulig.models.read_limits.Budget`; :func:`flat_state`
  walks the result iteratively, each container once (docs/security.md).

The legacy format's ``('module', class, source)`` persistent ids only name the class, whose source is
not compared; storage ids are answered by the format reader.
"""
from __future__ import annotations

import _compat_pickle
import pickle
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch

from neulig.errors import NeuligError
from neulig.models.read_limits import Budget, Limits, over_limit
from neulig.models.tensor_rebuild import ALLOWED_DTYPES, REFUSED_KINDS, Allowed, allowed_globals, bad_tensor, refused

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


def _describe(obj: Any) -> str:
    if isinstance(obj, (GlobalRef, PickledObject)):
        return obj.name if isinstance(obj, GlobalRef) else obj.cls
    if isinstance(obj, Allowed):
        return obj.name
    return f"{type(obj).__module__}.{type(obj).__qualname__} object"


def _counted(step: Callable[[Any], None]) -> Callable[[Any], None]:
    def counted(self: SafeUnpickler) -> None:
        self.budget.count_object()
        step(self)
    return counted


class SafeUnpickler(pickle._Unpickler):
    """Python's unpickler with every opcode that resolves, creates or calls something replaced, and every
    opcode counted in the file's :class:`Budget`. ``storage_load`` answers the file's storage ids."""

    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: Any, budget: Budget, storage_load: Callable[[tuple], Any] | None = None) -> None:
        super().__init__(file)
        self.budget, self.where, self._storage_load = budget, budget.where, storage_load

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) > 1 and isinstance(pid[0], (str, bytes)) and pid[0] in MODULE_IDS:
            return pid[1]  # legacy format: ('module', class, source file, source); the class is a token
        if self._storage_load is None or not isinstance(pid, tuple):
            raise pickle.UnpicklingError("persistent id outside a torch checkpoint's storages")
        return self._storage_load(pid)

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

    def _allowed(self, func: Allowed, args: tuple, kwargs: dict) -> Any:
        try:
            return func.fn(self.budget, *args, **kwargs)
        except TypeError as err:  # arguments no torch checkpoint has
            raise NeuligError(f"checkpoint {self.where} calls {func.name} with {err}; refused: save a state dict "
                              "of plain tensors") from None

    def _new(self, cls: Any, args: tuple, kwargs: dict) -> Any:
        if isinstance(cls, GlobalRef):
            return PickledObject(cls.name, tuple(args), dict(kwargs))
        if isinstance(cls, Allowed):
            return self._allowed(cls, tuple(args), dict(kwargs))
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
            if func.name in REFUSED_KINDS:
                raise bad_tensor(self.where, f"{REFUSED_KINDS[func.name]} ({func.name})")
            raise refused(func.name, self.where)
        if isinstance(func, Allowed):
            return self._allowed(func, args, {})
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
        elif type(inst) is OrderedDict and isinstance(state, dict):  # a state dict's _metadata
            inst.__dict__.update(state)
        elif isinstance(inst, torch.Tensor):  # Tensor.__setstate__ would set_() an unchecked storage
            raise bad_tensor(self.where, "a tensor given state by BUILD")
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
        if type(target) in (dict, OrderedDict):
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
    dispatch = {code: _counted(step) for code, step in dispatch.items()}
    del _ext


def load_pickled(path: Path, where: str | None = None, limits: Limits | None = None) -> Any:
    """The object ``torch.save``-d in ``path`` (zip archive or legacy format, :mod:`neulig.models.torch_file`),
    every class in it a :class:`PickledObject` and every other unknown global a :class:`GlobalRef`;
    tensors are real, checked and on the CPU. ``where`` names the file in errors (default: its path)."""
    from neulig.models.torch_file import load_torch_file

    return load_torch_file(Path(path), Budget(limits or Limits(), where or str(path)))


def _tensor(value: Any, key: str, where: str) -> torch.Tensor:
    if type(value) not in (torch.Tensor, torch.nn.Parameter):
        raise NeuligError(f"checkpoint {where}: pickled module entry {key!r} is a {_describe(value)}, not a tensor")
    if value.layout != torch.strided or value.device.type != "cpu" or value.dtype not in ALLOWED_DTYPES:
        raise bad_tensor(where, f"under {key!r} a {value.layout} tensor of {value.dtype} on {value.device}")
    return value.detach()


def _children(obj: Any, where: str) -> list[tuple[str, Any, bool]]:
    """(name, value, is_tensor) of what ``obj`` (a module record or a mapping) contributes to the state
    dict, in ``nn.Module.state_dict()``'s order: parameters, persistent buffers, then submodules."""
    if isinstance(obj, PickledObject):
        skip = obj.attr("_non_persistent_buffers_set") or ()
        tensors = [(str(name), value, True) for name, value in obj.attr("_parameters").items() if value is not None]
        tensors += [(str(name), value, True) for name, value in obj.attr("_buffers").items()
                    if value is not None and name not in skip]
        return tensors + [(str(name), child, False) for name, child in obj.attr("_modules").items()
                          if child is not None]
    return [(str(key), value, isinstance(value, torch.Tensor)) for key, value in obj.items()
            if isinstance(value, (torch.Tensor, Mapping)) or (isinstance(value, PickledObject) and value.is_module)]


def flat_state(obj: Any, budget: Budget | None = None) -> StateDict:
    """The state dict of a pickled object, as ``nn.Module.state_dict()`` would give it: for a module
    record its parameters, persistent buffers and submodules (``name.`` prefixes); for a mapping its
    tensors and, under ``key.``, its nested mappings and module records. Other values (epochs,
    arguments, preprocessing) are left out.

    Walked iteratively and memo-aware: each module or mapping is walked once; met again elsewhere, its
    entries are copied under the new prefix. One-line errors for a module or mapping that contains
    itself, nesting deeper than ``max_depth`` and more than ``max_tensors`` entries (``budget``'s limits)."""
    budget = budget or Budget(Limits(), "<pickle>")
    limits, where = budget.limits, budget.where
    entries: list[tuple[str, torch.Tensor]] = []
    walked: dict[int, tuple[str, int, int]] = {}  # id -> (prefix, first entry, end) of its first walk
    open_: dict[int, int] = {}  # ids being walked (ancestors of the current one) -> first entry
    stack: list[tuple[str, Any, str, int]] = [("enter", obj, "", 0)]

    def add(key: str, tensor: torch.Tensor) -> None:
        if len(entries) >= limits.max_tensors:
            raise over_limit(where, f"its state dict has more than {limits.max_tensors:,} tensors")
        entries.append((key, tensor))

    while stack:
        action, item, prefix, depth = stack.pop()
        if action == "tensor":
            add(prefix, _tensor(item, prefix, where))
        elif action == "leave":
            walked[id(item)] = (prefix, open_.pop(id(item)), len(entries))
        elif id(item) in open_:
            raise NeuligError(f"checkpoint {where}: the pickle contains itself under {prefix[:-1]!r}; "
                              "it is not a model checkpoint")
        elif id(item) in walked:
            first, begin, end = walked[id(item)]
            for key, tensor in entries[begin:end]:
                add(prefix + key[len(first):], tensor)
        elif depth > limits.max_depth:
            raise over_limit(where, f"its modules and mappings nest deeper than {limits.max_depth} levels")
        else:
            open_[id(item)] = len(entries)
            stack.append(("leave", item, prefix, depth))
            for name, value, is_tensor in reversed(_children(item, where)):
                stack.append(("tensor", value, prefix + name, depth) if is_tensor else
                             ("enter", value, f"{prefix}{name}.", depth + 1))
    return dict(entries)


def read_pickled_state(path: Path, where: str | None = None, limits: Limits | None = None) -> StateDict:
    """The flat state dict in a ``torch.save`` of a state dict, a whole module, or a mapping holding
    modules or tensors, read without running anything from the file and within ``limits`` (default
    :class:`Limits`); one-line error when it holds no tensor."""
    where = where or str(path)
    budget = Budget(limits or Limits(), where)
    from neulig.models.torch_file import load_torch_file

    obj = load_torch_file(Path(path), budget)
    state = flat_state(obj, budget)
    if not state:
        raise NeuligError(f"checkpoint {where} holds a {_describe(obj)} with no tensors; give a model checkpoint")
    return state
