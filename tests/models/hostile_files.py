"""Hostile checkpoints built at test time, one builder per file, for tests/models/test_hostile_checkpoints.py.

Each builder writes ``path``; payloads that would run code try to create ``marker``. :data:`CASES` says per
file what neulig must answer (a regex of its one-line refusal, or :data:`LOADS` for inert data that reads
as a valid image tower) and what plain ``torch.load(weights_only=False)`` does with it (``"marker"``: the
payload runs; ``"hang"``: it blocks), so the refusal tests can fail.
"""
from __future__ import annotations

import functools
import importlib
import io
import operator
import os
import pickle
import struct
import subprocess
import tarfile
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

LOADS = "loads"
GIB = 1 << 30


class Reduce:
    """Pickles as the call ``func(*args)`` (then BUILD with ``state`` when given)."""

    def __init__(self, func: Any, args: tuple, state: Any = None) -> None:
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)

    def __call__(self, *args: Any) -> Any:  # pickle wants a callable where a call's result is the callable
        raise TypeError("only pickled")


class Subclass(torch.Tensor):
    """A Tensor subclass; its pickle names this class."""


def _storage(tensor: torch.Tensor) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tensor.storage()  # a TypedStorage: torch.save writes it as a storage id


def _tensor_call(storage_of: torch.Tensor, offset: Any, size: Any, stride: Any) -> Reduce:
    return Reduce(torch._utils._rebuild_tensor_v2, (_storage(storage_of), offset, size, stride, False, OrderedDict()))


def _save(obj: Any, path: Path, **kwargs: Any) -> None:
    torch.save(obj, path, **kwargs)


def _with_visual(visual: dict, **replace: Any) -> dict:
    return {**visual, **replace}


def _zip(path: Path, data_pkl: bytes, storages: dict[str, bytes] | None = None, extra: dict[str, bytes] | None = None,
         deflate: tuple[str, ...] = ()) -> None:
    """A torch zip archive written by hand: ``archive/data.pkl``, ``archive/data/<key>``, ``extra`` records."""
    with zipfile.ZipFile(path, "w") as archive:
        records = {"data.pkl": data_pkl, "byteorder": b"little", "version": b"3\n",
                   **{f"data/{k}": v for k, v in (storages or {}).items()}, **(extra or {})}
        for name, data in records.items():
            method = zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
            archive.writestr(zipfile.ZipInfo(f"archive/{name}"), data, compress_type=method)


def _top(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        return archive.infolist()[0].filename.split("/")[0]  # torch names it after the file


def _replace_record(path: Path, name: str, data: bytes) -> None:
    top = _top(path)
    with zipfile.ZipFile(path) as archive:
        records = {info.filename: archive.read(info) for info in archive.infolist()}
    records[f"{top}/{name}"] = data
    with zipfile.ZipFile(path, "w") as archive:
        for record, content in records.items():
            archive.writestr(zipfile.ZipInfo(record), content)


def _record(path: Path, name: str) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return archive.read(f"{_top(path)}/{name}")


# ---- code payloads ------------------------------------------------------------------------------


def _touch(marker: Path) -> Reduce:
    return Reduce(os.system, (f"touch {marker}",))


def _import_time_and_setstate(path: Path, marker: Path, visual: dict, folder: Path) -> None:
    """A real image tower beside an object of a module whose import and whose objects' __setstate__
    each create ``marker``."""
    import sys

    name = f"hostile_{abs(hash(str(marker))) % 10 ** 8}"
    (folder / f"{name}.py").write_text("import pathlib\n"
                                        f"pathlib.Path({str(marker)!r}).touch()\n"
                                        "class Hook:\n"
                                        "    def __setstate__(self, state):\n"
                                        f"        pathlib.Path({str(marker)!r}).touch()\n")
    sys.path.insert(0, str(folder))
    try:
        _save({"visual": visual, "hook": importlib.import_module(name).Hook()}, path)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(name, None)
        marker.unlink(missing_ok=True)


def _torchscript_payload(path: Path, marker: Path) -> None:
    class Writer(torch.nn.Module):
        def __init__(self, target: str) -> None:
            super().__init__()
            self.target = target

        @torch.jit.export
        def __getstate__(self) -> tuple[str, bool]:
            return self.target, self.training

        @torch.jit.export
        def __setstate__(self, state: tuple[str, bool]) -> None:
            self.target = state[0]
            written = torch.from_file(self.target, shared=True, size=8)  # creates the file
            self.training = state[1] or written.numel() < 0  # used, so TorchScript keeps the call

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(Writer(str(marker))), str(path))


def _persistent_id_smuggling(path: Path, marker: Path) -> None:
    class Smuggler(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return ("storage", _touch(marker), "0", "cpu", 1) if obj is Smuggler else None

    buffer = io.BytesIO()
    Smuggler(buffer, protocol=2).dump({"weight": Smuggler})
    _zip(path, buffer.getvalue(), {"0": b"\0" * 4})


def _crafted_raw(make: Callable[[bytes], bytes]) -> Callable[[Path, Path], None]:
    def build(path: Path, marker: Path) -> None:
        path.write_bytes(make(f"touch {marker}".encode()))
    return build


# ---- TorchScript and legacy tar -----------------------------------------------------------------


def _torchscript_plain(path: Path, marker: Path) -> None:
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))


def _tar(path: Path, member: str) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("storages")
        if member == "fifo":
            info.type = tarfile.FIFOTYPE
        elif member == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        data = b"" if member != "regular" else pickle.dumps(0)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


# ---- tensors ------------------------------------------------------------------------------------


def _sparse_out_of_range(shape: tuple) -> torch.Tensor:
    indices = torch.tensor([[10 ** 9] * 2] + [[0, 1]] * (len(shape) - 1))
    return torch.sparse_coo_tensor(indices, torch.ones(2), shape, check_invariants=False)


def _bool_bytes(path: Path, marker: Path) -> None:
    _save({"flag": torch.tensor([True, False, True])}, path)
    _replace_record(path, "data/0", b"\x01\x07\x00")


def _location(path: Path, visual: dict) -> None:
    _save(visual, path)
    data = _record(path, "data.pkl")
    _replace_record(path, "data.pkl", data.replace(b"X\x03\x00\x00\x00cpu", b"X\x03\x00\x00\x00mps"))


def _short_record(path: Path, marker: Path) -> None:
    _save({"w": torch.ones(16)}, path)
    _replace_record(path, "data/0", b"\0" * 8)


# ---- memory and time bombs ----------------------------------------------------------------------


def _doubled_modules(levels: int) -> torch.nn.Module:
    module: torch.nn.Module = torch.nn.Linear(1, 1)
    for _ in range(levels):
        parent = torch.nn.Module()
        parent.a, parent.b = module, module
        module = parent
    return module


def _doubled_dicts(levels: int) -> dict:
    inner: dict = {"w": torch.ones(1)}
    for _ in range(levels):
        inner = {"a": inner, "b": inner}
    return inner


def _unicode(text: str) -> bytes:
    return b"X" + struct.pack("<I", len(text)) + text.encode()


def _deep(levels: int, modules: bool) -> bytes:
    """A protocol-2 pickle of ``levels`` nested dicts or module records, written without recursion."""
    record = b"chostile\nModule\n)\x81"  # GLOBAL, EMPTY_TUPLE, NEWOBJ: an inert module record
    if modules:  # record, its state {'_parameters': {}, '_buffers': {}, '_modules': {'c': <child>}}
        opening = record + b"}" + _unicode("_parameters") + b"}s" + _unicode("_buffers") + b"}s" + \
            _unicode("_modules") + b"}" + _unicode("c")
        closing = b"ssb"  # the child into _modules, _modules into the state, BUILD the record
    else:
        opening, closing = b"}" + _unicode("c"), b"s"
    return b"\x80\x02" + opening * levels + b"}" + closing * levels + b"."


def _deep_file(levels: int, modules: bool) -> Callable[[Path, Path], None]:
    def build(path: Path, marker: Path) -> None:
        _zip(path, _deep(levels, modules))
    return build


def _opcode_flood(count: int) -> Callable[[Path, Path], None]:
    def build(path: Path, marker: Path) -> None:
        _zip(path, b"\x80\x02](" + b"K\x00" * count + b"e.")
    return build


def _legacy_header() -> bytes:
    return b"".join(pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001,
                                                         {"protocol_version": 1001, "little_endian": True}))


def _legacy_storage_bomb(path: Path, marker: Path) -> None:
    _save({"w": torch.ones(4)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data.replace(b"K\x04Nt", b"J\x00\xe1\xf5\x05Nt", 1))  # the storage's numel: 4 -> 10^8


def _huge_bytes_opcode(path: Path, marker: Path) -> None:
    path.write_bytes(_legacy_header() + b"\x80\x02\x8e" + struct.pack("<Q", 1 << 40) + b"xx.")


def _deflated_storage(path: Path, marker: Path) -> None:
    zeros = torch.zeros(2 * (1 << 20))  # 8 MiB of zeros deflate about 1000:1
    buffer = io.BytesIO()
    torch.save({"w": zeros}, buffer)
    _zip(path, zipfile.ZipFile(buffer).read("archive/data.pkl"), {"0": zeros.numpy().tobytes()}, deflate=("data/0",))


def _over_budget(path: Path, marker: Path) -> None:
    _save({"w": torch.zeros(30 << 20)}, path)  # 120 MiB, above 8 x the tiny image tower + 64 MiB


def _self_loop() -> dict:
    loop: dict = {"w": torch.ones(1)}
    loop["again"] = loop
    return loop


@dataclass(frozen=True)
class Case:
    """One hostile file: its builder ``build(path, marker, visual, folder)``, neulig's expected answer
    (a regex of the refusal, or :data:`LOADS`), and plain torch.load's (``"marker"``, ``"hang"``, None)."""

    build: Callable[..., None]
    expect: str
    control: str | None = None


def _obj(make: Callable[[Path, dict, Path], Any], **save: Any) -> Callable[..., None]:
    def build(path: Path, marker: Path, visual: dict, folder: Path) -> None:
        _save(make(marker, visual, folder), path, **save)
    return build


def _file(make: Callable[[Path, Path], None]) -> Callable[..., None]:
    return lambda path, marker, visual, folder: make(path, marker)


REFUSED_CALL = r"would call {} when unpickled; refused before the call"
BAD_TENSOR = r"holds {}.*; only dense CPU tensors"
LIMIT = r"breaks a reading limit: .*{}"
NOT_READ = r"is {}.*, which neulig does not read"
UNREADABLE = r"cannot be read \(.*{}"
SYSTEM = r"(posix|os)\.system"

CASES: dict[str, Case] = {
    # code through a pickle opcode or a rebuild helper
    "os_system": Case(_obj(lambda m, v, f: {**v, "args": _touch(m)}), REFUSED_CALL.format(SYSTEM), "marker"),
    "eval": Case(_obj(lambda m, v, f: {**v, "x": Reduce(eval, (f"open({str(m)!r}, 'w').close()",))}),
                 REFUSED_CALL.format(r"builtins\.eval"), "marker"),
    "exec": Case(_obj(lambda m, v, f: {**v, "x": Reduce(exec, (f"open({str(m)!r}, 'w').close()",))}),
                 REFUSED_CALL.format(r"builtins\.exec"), "marker"),
    "popen": Case(_obj(lambda m, v, f: {**v, "x": Reduce(subprocess.Popen, (["touch", str(m)],))}),
                  REFUSED_CALL.format(r"subprocess\.Popen"), "marker"),
    "partial": Case(_obj(lambda m, v, f: {**v, "x": Reduce(functools.partial(os.system, f"touch {m}"), ())}),
                    REFUSED_CALL.format(r"functools\.partial"), "marker"),
    "methodcaller": Case(_obj(lambda m, v, f: {**v, "x": Reduce(operator.methodcaller("__call__", f"touch {m}"),
                                                                (os.system,))}),
                         REFUSED_CALL.format(r"_?operator\.methodcaller"), "marker"),
    "attrgetter_import": Case(_obj(lambda m, v, f: {**v, "x": Reduce(Reduce(operator.attrgetter("system"), (
        Reduce(importlib.import_module, ("os",)),)), (f"touch {m}",))}),
        REFUSED_CALL.format(r"_?operator\.attrgetter"), "marker"),
    "getattr_chain": Case(_obj(lambda m, v, f: {**v, "x": Reduce(Reduce(getattr, (
        Reduce(importlib.import_module, ("os",)), "system")), (f"touch {m}",))}),
        REFUSED_CALL.format(r"importlib\.import_module"), "marker"),
    "in_module_state": Case(_obj(lambda m, v, f: (lambda layer: setattr(layer, "hook", _touch(m)) or layer)(
        torch.nn.Linear(2, 2))), REFUSED_CALL.format(SYSTEM), "marker"),
    "legacy_format": Case(_obj(lambda m, v, f: [v, _touch(m)], _use_new_zipfile_serialization=False),
                          REFUSED_CALL.format(SYSTEM), "marker"),
    "protocol4_stack_global": Case(_obj(lambda m, v, f: {**v, "x": _touch(m)}, pickle_protocol=4),
                                   REFUSED_CALL.format(SYSTEM), "marker"),
    "raw_pickle": Case(_file(lambda p, m: p.write_bytes(pickle.dumps(_touch(m), protocol=2))),
                       REFUSED_CALL.format(SYSTEM), "marker"),
    "inst_opcode": Case(_file(_crafted_raw(lambda cmd: b"(S'" + cmd + b"'\nios\nsystem\n.")),
                        REFUSED_CALL.format(r"os\.system"), "marker"),
    "global_reduce_opcode": Case(_file(_crafted_raw(lambda cmd: b"\x80\x02cposix\nsystem\nX" +
                                                    struct.pack("<I", len(cmd)) + cmd + b"\x85R.")),
                                 REFUSED_CALL.format(r"posix\.system"), "marker"),
    "via_rebuild_helper": Case(_obj(lambda m, v, f: {**v, "x": Reduce(torch._tensor._rebuild_from_type_v2, (
        os.system, torch.Tensor, (f"touch {m}",), {}))}), REFUSED_CALL.format(SYSTEM), "marker"),
    "persistent_id_smuggling": Case(_file(_persistent_id_smuggling), REFUSED_CALL.format(SYSTEM), "marker"),
    "nested_torch_load": Case(_obj(lambda m, v, f: {**v, "x": Reduce(torch.storage._load_from_bytes, (
        (lambda b: torch.save(_touch(m), b) or b.getvalue())(io.BytesIO()),))}),
        REFUSED_CALL.format(r"torch\.storage\._load_from_bytes"), "marker"),
    "setstate_and_import": Case(_import_time_and_setstate, LOADS, "marker"),
    "extension_registry": Case(_file(_crafted_raw(lambda cmd: b"\x80\x02\x82\x01.")),
                               REFUSED_CALL.format("copyreg extension registry")),
    "torchscript_setstate": Case(_file(_torchscript_payload), NOT_READ.format(r"a TorchScript archive"), "marker"),
    # formats we refuse
    "torchscript_plain": Case(_file(_torchscript_plain), NOT_READ.format(r"a TorchScript archive")),
    "constants_pkl": Case(_file(lambda p, m: _zip(p, pickle.dumps({}, 2), extra={"constants.pkl": b"\x80\x02)."})),
                          NOT_READ.format(r"a TorchScript archive")),
    "tar_fifo": Case(_file(lambda p, m: _tar(p, "fifo")), NOT_READ.format(r"a legacy tar checkpoint"), "hang"),
    "tar_symlink": Case(_file(lambda p, m: _tar(p, "symlink")), NOT_READ.format(r"a legacy tar checkpoint")),
    "tar_regular": Case(_file(lambda p, m: _tar(p, "regular")), NOT_READ.format(r"a legacy tar checkpoint")),
    "big_endian": Case(_file(lambda p, m: (_save({"w": torch.ones(2)}, p), _replace_record(p, "byteorder", b"big"))),
                       NOT_READ.format(r"saved in big-endian byte order")),
    # tensors that are not plain dense CPU tensors inside their storage
    "sparse_out_of_range": Case(_obj(lambda m, v, f: _with_visual(v, **{"ln_post.weight": _sparse_out_of_range(
        tuple(v["ln_post.weight"].shape))})), BAD_TENSOR.format(r"a sparse tensor")),
    "meta_tensor": Case(_obj(lambda m, v, f: _with_visual(v, **{"ln_post.weight": torch.empty(
        v["ln_post.weight"].shape, device="meta")})), BAD_TENSOR.format(r"a meta tensor")),
    "size_past_storage": Case(_obj(lambda m, v, f: {**v, "x": _tensor_call(torch.ones(4), 0, (1000,), (1,))}),
                              BAD_TENSOR.format(r"a tensor of size \(1000,\), stride \(1,\), offset 0 reaching")),
    "offset_past_storage": Case(_obj(lambda m, v, f: {**v, "x": _tensor_call(torch.ones(4), 10, (2,), (1,))}),
                                BAD_TENSOR.format(r"a tensor of size \(2,\), stride \(1,\), offset 10")),
    "stride_past_storage": Case(_obj(lambda m, v, f: {**v, "x": _tensor_call(torch.ones(4), 0, (2, 2), (100, 1))}),
                                BAD_TENSOR.format(r"a tensor of size \(2, 2\), stride \(100, 1\)")),
    "negative_size": Case(_obj(lambda m, v, f: {**v, "x": _tensor_call(torch.ones(4), 0, (-1,), (1,))}),
                          BAD_TENSOR.format(r"a tensor whose size is \(-1,\)")),
    "empty_with_huge_dims": Case(_obj(lambda m, v, f: {**v, "x": _tensor_call(torch.ones(4), 0, (0, 1 << 63), (1, 1))}),
                                 BAD_TENSOR.format(r"a tensor whose size is \(0, 9223372036854775808\)")),
    "quantized": Case(_obj(lambda m, v, f: {**v, "x": torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)}),
                      BAD_TENSOR.format(r"a storage of type torch\.QInt8Storage")),
    "nested": Case(_obj(lambda m, v, f: {**v, "x": torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])}),
                   BAD_TENSOR.format(r"a nested tensor")),
    "tensor_subclass": Case(_obj(lambda m, v, f: {**v, "x": torch.ones(2).as_subclass(Subclass)}),
                            BAD_TENSOR.format(r"a Tensor subclass \(.*Subclass\)")),
    "complex_dtype": Case(_obj(lambda m, v, f: {**v, "x": torch.ones(2, dtype=torch.complex64)}),
                          BAD_TENSOR.format(r"a storage of type torch\.ComplexFloatStorage")),
    "float8_dtype": Case(_obj(lambda m, v, f: {**v, "x": torch.ones(2).to(torch.float8_e4m3fn)}),
                         BAD_TENSOR.format(r"a tensor of dtype torch\.float8_e4m3fn")),
    "bool_bytes": Case(_file(_bool_bytes), BAD_TENSOR.format(r"a bool tensor with bytes other than 0 and 1")),
    "short_storage_record": Case(_file(_short_record), UNREADABLE.format(r"storage '0' of 64 bytes has 8 bytes")),
    "int_in_place_of_float": Case(_obj(lambda m, v, f: _with_visual(v, **{"ln_post.weight": v["ln_post.weight"].long()})),
                                  r"key 'ln_post\.weight' is torch\.int64, expected torch\.float32"),
    "parameter_with_state": Case(_obj(lambda m, v, f: {**v, "x": Reduce(torch._utils._rebuild_parameter_with_state, (
        torch.ones(2), False, OrderedDict(), {"hook": 1}))}), BAD_TENSOR.format(r"a parameter with Python attributes")),
    "tensor_build_state": Case(_obj(lambda m, v, f: {**v, "x": Reduce(torch._utils._rebuild_tensor_v2, (
        _storage(torch.ones(4)), 0, (1,), (1,), False, OrderedDict()), (_storage(torch.ones(4)), 0, (1000,), (1,)))}),
        BAD_TENSOR.format(r"a tensor given state by BUILD")),
    "device_tensor_from_numpy": Case(_obj(lambda m, v, f: {**v, "x": Reduce(
        torch._utils._rebuild_device_tensor_from_numpy, ("data", torch.float32, "cuda", False))}),
        BAD_TENSOR.format(r"a device tensor")),
    "other_device_location": Case(lambda p, m, v, f: _location(p, v), LOADS),
    # memory and time bombs from tiny files
    "bytearray_bomb": Case(_obj(lambda m, v, f: {**v, "x": Reduce(bytearray, (2_200_000_000,))}),
                           r"calls builtins\.bytearray with bytearray of a int, not of bytes; refused"),
    "set_over_stride0_tensor": Case(_obj(lambda m, v, f: {**v, "x": Reduce(set, (
        _tensor_call(torch.ones(1), 0, (10 ** 9,), (0,)),))}), LIMIT.format(r"a tensor of size \(1000000000,\) takes")),
    "codecs_other_encoding": Case(_obj(lambda m, v, f: {**v, "x": Reduce(__import__("_codecs").encode, ("x" * 64, "zlib"))}),
                                  r"calls _codecs\.encode with _codecs\.encode of something other than latin-1"),
    "ordered_dict_over_tensor": Case(_obj(lambda m, v, f: {**v, "x": Reduce(OrderedDict, (torch.ones(3),))}),
                                     r"calls collections\.OrderedDict with OrderedDict of something other"),
    "deflated_storage": Case(_file(_deflated_storage), LIMIT.format(r"archive member archive/data/0 expands \d+:1")),
    "over_architecture_budget": Case(_file(_over_budget), LIMIT.format(r"its archive members declare more than")),
    "legacy_storage_bomb": Case(_file(_legacy_storage_bomb), UNREADABLE.format(r"declares 400000000 bytes")),
    "huge_bytes_opcode": Case(_file(_huge_bytes_opcode), UNREADABLE.format(r"asks for 1099511627776 bytes")),
    "doubled_modules_40": Case(_obj(lambda m, v, f: _doubled_modules(40)), LIMIT.format(r"more than 50,000 tensors")),
    "doubled_dicts_40": Case(_obj(lambda m, v, f: _doubled_dicts(40)), LIMIT.format(r"more than 50,000 tensors")),
    "nested_modules_3000": Case(_file(_deep_file(3000, modules=True)), LIMIT.format(r"nest deeper than 64 levels")),
    "nested_dicts_3000": Case(_file(_deep_file(3000, modules=False)), LIMIT.format(r"nest deeper than 64 levels")),
    "opcode_flood": Case(_file(_opcode_flood(600_000)), LIMIT.format(r"runs more than 500,000 opcodes")),
    "self_containing": Case(_obj(lambda m, v, f: _self_loop()), r"the pickle contains itself under 'again'"),
}
