"""torch's checkpoint formats, read by our own code: ``torch.load`` is never called on a file from elsewhere.

- **zip archive** (``torch.save`` since torch 1.6): ``<name>/data.pkl`` is read by
  :class:`~neulig.models.pickled.SafeUnpickler`; each storage it names comes from the record
  ``<name>/data/<key>``, whose size must be the declared numel x element size. ``byteorder`` must be
  ``little``. An archive with ``constants.pkl`` or ``code/`` is TorchScript (``torch.jit.save``; loading
  it runs its code) and is refused.
- **legacy format** (``_use_new_zipfile_serialization=False``, torch < 1.6): the pickles of the magic
  number, protocol version and system info, the object pickle, the list of storage keys, then each
  storage as an 8-byte little-endian element count and its raw bytes. Every pickle goes through the
  same unpickler; storages are allocated only once their declared bytes are known to fit in the rest
  of the file and in the budget.
- **legacy tar** (torch < 0.4): refused; torch extracts it with tarfile, which follows its links and
  blocks on its FIFOs.

Archive members are checked before they are read (number, declared sizes against the byte budget,
compression ratio), and no read asks for more bytes than the file has left (docs/security.md).
"""
from __future__ import annotations

import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

from neulig.errors import NeuligError, unreadable
from neulig.models.pickled import SafeUnpickler
from neulig.models.read_limits import Budget, over_limit
from neulig.models.tensor_rebuild import Storage, StorageType, bad_tensor

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL = 1001
RATIO_FLOOR = 64 << 10  # members smaller than this are not ratio-checked


def refused_format(where: str, what: str) -> NeuligError:
    return NeuligError(f"checkpoint {where} is {what}, which neulig does not read (loading it runs code or "
                       "unpacks files); load it in a trusted session and save its state dict: "
                       "torch.save(model.state_dict(), path)")


class BoundedReader:
    """A file for the unpickler that never reads past ``end``: a read asking for more is a truncated file,
    refused before anything is allocated; a text opcode's line is at most ``max_line`` bytes."""

    def __init__(self, file: BinaryIO, end: int, max_line: int) -> None:
        self.file, self.end, self.max_line = file, end, max_line

    @property
    def left(self) -> int:
        return self.end - self.file.tell()

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.left:
            raise pickle.UnpicklingError(f"asks for {n} bytes with {self.left} left in the file")
        return self.file.read(n)

    def readinto(self, buffer: Any) -> int:
        if len(buffer) > self.left:
            raise pickle.UnpicklingError(f"asks for {len(buffer)} bytes with {self.left} left in the file")
        return self.file.readinto(buffer)

    def readline(self) -> bytes:
        line = self.file.readline(min(self.max_line, self.left) + 1)
        if len(line) > self.max_line:
            raise pickle.UnpicklingError(f"a text opcode's line is longer than {self.max_line} bytes")
        return line


def _declared(pid: tuple, budget: Budget) -> tuple[StorageType, str, int]:
    """(storage type, key, numel) of a ``('storage', type, key, location, numel, ...)`` persistent id."""
    kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
    if kind != "storage" or len(pid) < 5:
        raise pickle.UnpicklingError(f"unknown persistent id {str(pid)[:60]}")
    storage_type, key, numel = pid[1], pid[2], pid[4]
    if not isinstance(storage_type, StorageType):
        raise bad_tensor(budget.where, f"a storage of type {getattr(storage_type, 'name', storage_type)}")
    if not isinstance(key, str) or type(numel) is not int or numel < 0:
        raise pickle.UnpicklingError(f"malformed storage id {str(pid)[:60]}")
    return storage_type, key, numel


def _buffer(nbytes: int) -> tuple[bytearray, torch.Tensor]:
    data = bytearray(nbytes)
    return data, torch.frombuffer(data, dtype=torch.uint8) if nbytes else torch.empty(0, dtype=torch.uint8)


# ---- zip archive --------------------------------------------------------------------------------


def _members(archive: zipfile.ZipFile, budget: Budget) -> tuple[str, dict[str, zipfile.ZipInfo]]:
    """The archive's top folder and {name: member}, after the checks on members, sizes and ratios."""
    limits, where = budget.limits, budget.where
    infos = archive.infolist()
    if not infos:
        raise pickle.UnpicklingError("empty zip archive")
    top = infos[0].filename.split("/")[0]
    members = {info.filename: info for info in infos}
    if f"{top}/constants.pkl" in members or any(name.startswith(f"{top}/code/") for name in members):
        raise refused_format(where, "a TorchScript archive (torch.jit.save)")
    total = 0
    for info in infos:
        total += info.file_size
        if total > limits.max_bytes + limits.max_bytes // 8:
            raise over_limit(where, f"its archive members declare more than {limits.max_bytes:,} bytes "
                                    f"({limits.basis})")
        ratio = info.file_size / max(info.compress_size, 1)
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > RATIO_FLOOR and ratio > limits.max_ratio:
            raise over_limit(where, f"archive member {info.filename} expands {ratio:.0f}:1 (limit "
                                    f"{limits.max_ratio:.0f}:1)")
    if f"{top}/data.pkl" not in members:
        raise pickle.UnpicklingError(f"zip archive without {top}/data.pkl")
    return top, members


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, out: Any) -> None:
    with archive.open(info) as member:
        view, done = memoryview(out), 0
        while done < len(view):
            got = member.readinto(view[done:])
            if not got:
                raise pickle.UnpicklingError(f"archive member {info.filename} is shorter than declared")
            done += got


def _entry_count(path: Path) -> int:
    with open(path, "rb") as file:
        end = zipfile._EndRecData(file)  # the end-of-central-directory record, before zipfile parses it
    if end is None:
        raise pickle.UnpicklingError("zip archive without an end of central directory")
    return end[zipfile._ECD_ENTRIES_TOTAL]


def _load_zip(path: Path, budget: Budget) -> Any:
    if _entry_count(path) > budget.limits.max_members:
        raise over_limit(budget.where, f"its archive has more than {budget.limits.max_members:,} members")
    with zipfile.ZipFile(path) as archive:
        top, members = _members(archive, budget)
        order = members.get(f"{top}/byteorder")
        if order is not None and order.file_size < 16 and archive.read(order).strip() != b"little":
            raise refused_format(budget.where, "saved in big-endian byte order")
        storages: dict[str, Storage] = {}

        def storage_load(pid: tuple) -> Storage:
            storage_type, key, numel = _declared(pid, budget)
            nbytes = numel * storage_type.dtype.itemsize
            if key not in storages:
                info = members.get(f"{top}/data/{key}")
                if info is None or info.file_size != nbytes:
                    raise pickle.UnpicklingError(f"storage {key!r} of {nbytes} bytes has "
                                                 f"{'no record' if info is None else f'{info.file_size} bytes'}")
                budget.spend(nbytes, f"storage {key!r}")
                data, tensor = _buffer(nbytes)
                _read_member(archive, info, data)
                storages[key] = Storage(key, storage_type.dtype, tensor)
            storage = storages[key]
            if storage.data.numel() != nbytes:
                raise pickle.UnpicklingError(f"storage {key!r} is named with two sizes")
            return Storage(key, storage_type.dtype, storage.data)

        pickled = bytearray(members[f"{top}/data.pkl"].file_size)  # declared sizes are within the budget
        _read_member(archive, members[f"{top}/data.pkl"], pickled)
        return SafeUnpickler(io.BytesIO(pickled), budget, storage_load).load()


# ---- legacy format ------------------------------------------------------------------------------


def _load_legacy(path: Path, budget: Budget) -> Any:
    size = path.stat().st_size
    with open(path, "rb") as raw:
        file = BoundedReader(raw, size, budget.limits.max_line)

        def unpickle(storage_load: Any = None) -> Any:
            return SafeUnpickler(file, budget, storage_load).load()

        if unpickle() != LEGACY_MAGIC:
            raise pickle.UnpicklingError("no torch magic number")
        if unpickle() != LEGACY_PROTOCOL:
            raise pickle.UnpicklingError("unknown legacy protocol version")
        sys_info = unpickle()
        if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
            raise refused_format(budget.where, "saved in big-endian byte order")
        storages: dict[str, tuple[bytearray, Storage]] = {}
        declared = [0]

        def storage_load(pid: tuple) -> Storage:
            storage_type, key, numel = _declared(pid, budget)
            dtype = storage_type.dtype
            if key not in storages:
                nbytes = numel * dtype.itemsize
                declared[0] += nbytes + 8
                if declared[0] > file.left:
                    raise pickle.UnpicklingError(f"storage {key!r} declares {nbytes} bytes; the file has "
                                                 f"{file.left} left")
                budget.spend(nbytes, f"storage {key!r}")
                data, tensor = _buffer(nbytes)
                storages[key] = (data, Storage(key, dtype, tensor))
            root = storages[key][1]
            view = pid[5] if len(pid) > 5 else None
            if view is None:
                return Storage(key, dtype, root.data)
            view_key, offset, count = view
            if type(offset) is not int or type(count) is not int or offset < 0 or count < 0 or \
                    (offset + count) * dtype.itemsize > root.data.numel():
                raise bad_tensor(budget.where, f"a storage view {view_key!r} outside storage {key!r}")
            return Storage(key, dtype, root.data[offset * dtype.itemsize:(offset + count) * dtype.itemsize])

        result = unpickle(storage_load)
        keys = unpickle()
        if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(storages):
            raise pickle.UnpicklingError("the storage keys do not match the storages the object names")
        for key in keys:
            data, storage = storages[key]
            (count,) = struct.unpack("<q", file.read(8))
            if count * storage.dtype.itemsize != len(data):
                raise pickle.UnpicklingError(f"storage {key!r} holds {count} elements, declared otherwise")
            if file.readinto(data) != len(data):
                raise pickle.UnpicklingError(f"storage {key!r} is cut short")
        return result


def load_torch_file(path: Path, budget: Budget) -> Any:
    """The object in the ``torch.save`` file ``path`` (zip or legacy format), read within ``budget``."""
    with open(path, "rb") as file:
        head = file.read(512)
    if len(head) >= 262 and head[257:262] == b"ustar":
        raise refused_format(budget.where, "a legacy tar checkpoint (torch < 0.4)")
    try:
        return _load_zip(path, budget) if head[:4] == b"PK\x03\x04" else _load_legacy(path, budget)
    except NeuligError:
        raise
    except Exception as err:  # every reader's error means the same to the user
        raise unreadable(f"checkpoint {budget.where}", err,
                         "it may be truncated or not a torch checkpoint: export it again") from err
