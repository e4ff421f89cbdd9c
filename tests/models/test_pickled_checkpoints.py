"""Whole-module checkpoints (task vectors' ImageEncoder/ImageClassifier) are read as data: exactly the
saved tensors, their classes never imported; any pickled call outside torch's allowlist is refused
before it runs."""
from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import time

import pytest
import torch

from neulig.errors import NeuligError
from neulig.models.experts import image_tower
from neulig.models.pickled import GlobalRef, PickledObject, load_pickled, read_pickled_state

ARCH = "neulig-tiny"
SAVE_FORMATS = {  # torch's zip archive (default protocol 2) and legacy format; protocol 1 uses copyreg._reconstructor
    "zip": {},
    "zip-protocol1": {"pickle_protocol": 1},
    "legacy": {"_use_new_zipfile_serialization": False},
}


def _assert_same(got: dict, expected: dict) -> None:
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key


def _snapshot(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("save_format", list(SAVE_FORMATS))
def test_image_encoder_pickle_gives_exactly_the_saved_state_dict(tmp_path, wrappers, save_format):
    encoder = wrappers.encoder()
    expected = _snapshot(encoder)
    assert any(k.startswith("model.visual.") for k in expected) and "model.transformer" not in str(list(expected))
    path = tmp_path / "finetuned.pt"
    torch.save(encoder, path, **SAVE_FORMATS[save_format])
    wrappers.forget(delete_file=True)  # the class's module exists nowhere now

    _assert_same(read_pickled_state(path), expected)
    assert wrappers.name not in sys.modules


def test_reading_never_imports_the_module_nor_runs_setstate(tmp_path, wrappers):
    path = tmp_path / "finetuned.pt"
    torch.save(wrappers.encoder(), path)
    wrappers.forget(delete_file=False)  # still importable from sys.path

    record = load_pickled(path)
    assert isinstance(record, PickledObject) and record.cls == f"{wrappers.name}.ImageEncoder" and record.is_module
    assert record.attr("val_preprocess").cls == "torchvision.transforms.transforms.Compose"
    assert not wrappers.imported.exists() and not wrappers.setstate.exists()
    assert wrappers.name not in sys.modules

    torch.load(path, weights_only=False)  # the markers do work: an ordinary load imports and runs both
    assert wrappers.imported.exists() and wrappers.setstate.exists()


def test_image_classifier_and_its_image_tower(tmp_path, wrappers, layout):
    classifier = wrappers.classifier()
    expected, visual = _snapshot(classifier), _snapshot(classifier.image_encoder.model.visual)
    path = tmp_path / "classifier.pt"
    torch.save(classifier, path)
    wrappers.forget(delete_file=True)

    state = read_pickled_state(path)
    _assert_same(state, expected)
    assert "classification_head.weight" in state
    _assert_same(image_tower(state, layout, ARCH, str(path)), visual)


@pytest.mark.parametrize("what", ["visual", "clip", "image_encoder"])
def test_image_tower_under_any_wrapper(tmp_path, wrappers, layout, make_clip, what):
    encoder = wrappers.encoder(seed=3)
    obj = {"visual": encoder.model.visual, "clip": make_clip(seed=3), "image_encoder": encoder}[what]
    visual = _snapshot(obj.visual if what == "clip" else encoder.model.visual)
    path = tmp_path / "expert.pt"
    torch.save(obj, path)
    _assert_same(image_tower(read_pickled_state(path), layout, ARCH, str(path)), visual)


def test_non_persistent_buffers_and_nested_mappings(tmp_path):
    module = torch.nn.BatchNorm1d(3)
    module.register_buffer("scratch", torch.ones(2), persistent=False)
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 7, "model": module, "extra": {"w": torch.arange(3)}}, path)
    state = read_pickled_state(path)
    assert set(state) == {f"model.{k}" for k in module.state_dict()} | {"extra.w"}
    assert torch.equal(state["extra.w"], torch.arange(3))


def test_a_self_containing_pickle_is_one_line(tmp_path):
    loop: dict = {"w": torch.ones(1)}
    loop["again"] = loop
    path = tmp_path / "loop.pt"
    torch.save(loop, path)
    with pytest.raises(NeuligError, match=r"loop\.pt: the pickle contains itself under 'again'"):
        read_pickled_state(path)


def test_image_tower_mismatch_names_what_was_found(tmp_path, wrappers, layout):
    path = tmp_path / "finetuned.pt"
    torch.save(wrappers.encoder(), path)
    state = read_pickled_state(path)
    wrong = dict(layout, **{"ln_post.weight": torch.empty(7, device="meta")})
    with pytest.raises(NeuligError, match=r"under 'model\.visual\.', key 'ln_post\.weight' has shape \(96,\), "
                                          r"expected \(7,\)"):
        image_tower(state, wrong, ARCH, str(path))
    with pytest.raises(NeuligError, match=r"no key ends with 'class_embedding' \(2 tensors, e\.g\. 'weight', 'bias'\)"):
        image_tower({"weight": torch.ones(1), "bias": torch.ones(1)}, layout, ARCH, str(path))


# ---- hostile pickles ----------------------------------------------------------------------------

SYSTEM_NAMES = (f"{os.system.__module__}.system", "os.system")


class Payload:
    """Pickles as a call that would create ``marker``."""

    def __init__(self, kind: str, marker) -> None:
        self.kind, self.marker = kind, str(marker)

    def __reduce__(self):
        if self.kind == "os.system":
            return os.system, (f"touch {self.marker}",)
        if self.kind == "builtins.eval":
            return eval, (f"open({self.marker!r}, 'w').close()",)
        if self.kind == "subprocess.Popen":
            return subprocess.Popen, (["touch", self.marker],)
        if self.kind == "via_rebuild":  # an allowlisted torch function that calls its first argument
            return torch._tensor._rebuild_from_type_v2, (os.system, torch.Tensor, (f"touch {self.marker}",), {})
        raise ValueError(self.kind)


REFUSED_NAME = {"os.system": SYSTEM_NAMES, "builtins.eval": ("builtins.eval",),
                "subprocess.Popen": ("subprocess.Popen",), "via_rebuild": SYSTEM_NAMES}


def _save(kind: str, container: str, path, marker) -> None:
    payload = Payload(kind, marker)
    if container == "top":
        torch.save({"weight": torch.ones(2), "args": payload}, path)
    elif container == "module_state":  # hidden in a module's __dict__, unpickled by BUILD
        layer = torch.nn.Linear(2, 2)
        layer.hook = payload
        torch.save(layer, path)
    elif container == "legacy":
        torch.save([payload], path, _use_new_zipfile_serialization=False)
    elif container == "raw_pickle":  # not a torch file: torch.load unpickles it as the legacy header
        path.write_bytes(pickle.dumps(payload, protocol=2))


def _assert_refused(path, names) -> str:
    with pytest.raises(NeuligError) as err:
        read_pickled_state(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "refused" in message
    assert any(f"call {name} " in message for name in names), message
    return message


@pytest.mark.parametrize(("kind", "container"), [
    ("os.system", "top"), ("builtins.eval", "top"), ("subprocess.Popen", "top"), ("via_rebuild", "top"),
    ("os.system", "module_state"), ("os.system", "legacy"), ("os.system", "raw_pickle"),
])
def test_a_pickled_call_is_refused_before_it_runs(tmp_path, kind, container):
    marker, path = tmp_path / "payload-ran", tmp_path / "expert.pt"
    _save(kind, container, path, marker)
    _assert_refused(path, REFUSED_NAME[kind])
    if kind == "subprocess.Popen":
        time.sleep(0.3)  # a spawned touch would have finished by now
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "subprocess.Popen", "via_rebuild"])
def test_the_payloads_are_live(tmp_path, kind):
    """The refusal tests can fail: unpickled the ordinary way, each payload creates its marker."""
    marker = tmp_path / "payload-ran"
    try:
        result = pickle.loads(pickle.dumps(Payload(kind, marker), protocol=2))
    except AttributeError:  # via_rebuild: torch fails on os.system's return value, after the call
        result = None
    if isinstance(result, subprocess.Popen):
        result.wait()
    assert marker.exists()


def _crafted(kind: str, command: bytes) -> bytes:
    if kind == "inst":  # protocol 0 INST: find the class, call it with the marked arguments
        return b"(S'" + command + b"'\nios\nsystem\n."
    if kind == "global_reduce":  # protocol 2 GLOBAL + REDUCE, as pickle writes os.system(command)
        return b"\x80\x02cposix\nsystem\nX" + struct.pack("<I", len(command)) + command + b"\x85R."
    return b"\x80\x02\x82\x01."  # EXT1: a global looked up in copyreg's extension registry


@pytest.mark.parametrize(("kind", "name"), [("inst", "os.system"), ("global_reduce", "posix.system"),
                                            ("ext", "copyreg extension registry")])
def test_crafted_opcodes_are_refused(tmp_path, kind, name):
    marker, path = tmp_path / "payload-ran", tmp_path / "crafted.pt"
    path.write_bytes(_crafted(kind, f"touch {marker}".encode()))
    _assert_refused(path, (name,))
    assert not marker.exists()


def test_unknown_globals_that_are_never_called_stay_tokens(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"weight": torch.ones(2), "fn": os.path.join, "cls": subprocess.Popen}, path)
    content = load_pickled(path)
    assert isinstance(content["fn"], GlobalRef) and content["fn"].name.endswith("path.join")
    assert isinstance(content["cls"], GlobalRef) and content["cls"].name == "subprocess.Popen"
    with pytest.raises(NeuligError, match=r"would call subprocess\.Popen when unpickled; refused"):
        content["cls"](["true"])
    assert read_pickled_state(path).keys() == {"weight"}


def test_truncated_file_is_one_line(tmp_path, wrappers):
    path = tmp_path / "finetuned.pt"
    torch.save(wrappers.encoder(), path)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(NeuligError, match=r"cannot be read .*export it again") as err:
        read_pickled_state(path)
    assert "\n" not in str(err.value)
