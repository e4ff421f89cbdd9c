"""Hostile checkpoints (tests/models/hostile_files.py, built at test time) are refused in one line or read
as inert data, through the path the CLI takes (``read_visual``), each in a child process: no payload
runs (its marker file never appears), nothing hangs (a timeout), the child's peak memory stays under
1 GiB. A control per payload shows it is live: plain ``torch.load(weights_only=False)`` runs it (or
hangs). The community's own layouts keep loading. Run with ``-s`` for the per-file time and memory."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from neulig.errors import NeuligError
from neulig.models.expert_sources import read_visual
from neulig.models.read_limits import Limits
from tests.conftest import REPO
from tests.models.conftest import ARCH, tiny_clip
from tests.models.hostile_files import CASES, GIB, LOADS, Reduce
from tests.models.test_pickled_checkpoints import _assert_same

# building the quantized and nested cases makes torch announce those tensor kinds' deprecation: the files
# are hostile on purpose, the announcement is not about neulig
pytestmark = [pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning"),
              pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")]

TIMEOUT_S = 60  # far above any answer; a hang is what it catches
HANG_S = 5  # how long the hang control waits for plain torch.load
MEASURED: list[tuple[str, dict]] = []


@pytest.fixture(scope="module")
def visual() -> dict:
    return {k: v.detach().clone() for k, v in tiny_clip().visual.state_dict().items()}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, visual):
    """The child process of tests/models/sandbox.py; ``sandbox(action, path)`` is its JSON answer."""
    spec = tmp_path_factory.mktemp("sandbox") / "layout.json"
    spec.write_text(json.dumps([[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in visual.items()]))
    child = subprocess.Popen([sys.executable, "-m", "tests.models.sandbox", str(spec)], cwd=REPO, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def ask(action: str, path: Path, timeout: float = TIMEOUT_S, sys_path: tuple = ()) -> dict:
        child.stdin.write(json.dumps({"action": action, "path": str(path), "timeout": timeout,
                                      "sys_path": list(sys_path)}) + "\n")
        child.stdin.flush()
        return json.loads(child.stdout.readline())

    yield ask
    child.stdin.close()
    child.wait(timeout=30)
    if MEASURED:
        seconds = [r["seconds"] for _, r in MEASURED]
        peaks = [r["peak_rss_kib"] / 1024 for _, r in MEASURED]
        growth = [(r["peak_rss_kib"] - r["rss_before_kib"]) / 1024 for _, r in MEASURED]
        print(f"\nhostile files: {len(MEASURED)}; read time max {max(seconds):.3f} s, sum {sum(seconds):.2f} s; "
              f"child peak RSS max {max(peaks):.0f} MiB (growth during the read max {max(growth):.0f} MiB)")
        for name, r in MEASURED:
            print(f"  {name:28s} {r['outcome']:8s} {r['seconds']:7.3f} s  peak {r['peak_rss_kib'] / 1024:6.0f} MiB  "
                  f"+{(r['peak_rss_kib'] - r['rss_before_kib']) / 1024:5.0f} MiB")


def _build(name: str, folder: Path, visual: dict) -> tuple[Path, Path]:
    folder.mkdir(exist_ok=True)
    path, marker = folder / f"{name}.pt", folder / "payload-ran"
    CASES[name].build(path, marker, visual, folder)
    assert not marker.exists()
    return path, marker


def test_there_are_forty_hostile_files_and_every_code_payload_has_a_control():
    assert len(CASES) >= 40
    code = [n for n, c in CASES.items() if "would call" in c.expect or "TorchScript" in c.expect]
    assert len(code) >= 20 and all(CASES[n].control for n in code if n not in {
        "extension_registry", "torchscript_plain", "constants_pkl"})


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_file_is_refused_in_one_line_or_read_as_data(name, sandbox, visual, tmp_path):
    path, marker = _build(name, tmp_path / "files", visual)
    result = sandbox("neulig", path)
    MEASURED.append((name, result))
    time.sleep(0.1 if "popen" not in name else 0.5)  # a spawned process would have finished by now
    assert not marker.exists(), result
    assert result["peak_rss_kib"] < GIB // 1024, result
    expect = CASES[name].expect
    if expect == LOADS:
        assert result["outcome"] == "loaded" and result["message"] == f"{len(visual)} tensors", result
        return
    assert result["outcome"] == "refused", result
    message = result["message"]
    assert "\n" not in message and str(path) in message, message
    assert __import__("re").search(expect, message), message


CONTROLS = [n for n, c in CASES.items() if c.control]


@pytest.mark.parametrize("name", CONTROLS)
def test_the_payload_is_live_under_plain_torch_load(name, sandbox, visual, tmp_path):
    path, marker = _build(name, tmp_path / "files", visual)
    control = CASES[name].control
    result = sandbox("torch", path, timeout=HANG_S if control == "hang" else TIMEOUT_S, sys_path=(str(path.parent),))
    if control == "hang":
        assert result["outcome"] == "timeout", result
        return
    for _ in range(50):  # a spawned `touch` may still be on its way
        if marker.exists():
            break
        time.sleep(0.1)
    assert marker.exists(), result


# ---- the community's layouts keep loading -------------------------------------------------------


@pytest.mark.parametrize("layout_name", ["image_encoder", "ordered_dict", "legacy_format"])
def test_community_layouts_keep_loading(layout_name, sandbox, wrappers, visual, tmp_path):
    layout = {k: torch.empty_like(v, device="meta") for k, v in visual.items()}
    path = tmp_path / "finetuned.pt"
    if layout_name == "image_encoder":  # task vectors' whole pickled ImageEncoder, its class gone
        encoder = wrappers.encoder()
        expected = {k: v.detach().clone() for k, v in encoder.model.visual.state_dict().items()}
        torch.save(encoder, path)
        wrappers.forget(delete_file=True)
    else:
        expected = visual
        state = torch.nn.Module.state_dict(tiny_clip().visual) if layout_name == "ordered_dict" else dict(visual)
        expected = {k: v.detach().clone() for k, v in state.items()}
        torch.save(state, path, _use_new_zipfile_serialization=layout_name != "legacy_format")
    _assert_same(read_visual(path, layout, ARCH), expected)
    result = sandbox("neulig", path)
    assert result["outcome"] == "loaded", result


# ---- limits given directly, and the command line ------------------------------------------------


def test_limits_on_archive_members_and_bytes(tmp_path):
    from neulig.models.pickled import read_pickled_state

    path = tmp_path / "state.pt"
    torch.save({f"w{i}": torch.ones(4096) for i in range(20)}, path)  # 20 storages of 16 KiB
    with pytest.raises(NeuligError, match=r"breaks a reading limit: its archive has more than 10 members"):
        read_pickled_state(path, limits=Limits(max_members=10))
    with pytest.raises(NeuligError, match=r"breaks a reading limit: its archive members declare more than 200,000"):
        read_pickled_state(path, limits=Limits(max_bytes=200_000))
    with pytest.raises(NeuligError, match=r"breaks a reading limit: storage '18' takes its storage bytes past "
                                          r"300,000 \(the default for a file of no stated architecture\)"):
        read_pickled_state(path, limits=Limits(max_bytes=300_000))
    assert len(read_pickled_state(path, limits=Limits(max_bytes=20 * 4096 * 4))) == 20


def test_a_stride_zero_view_counts_what_it_spans(tmp_path):
    from neulig.models.pickled import read_pickled_state
    from tests.models.hostile_files import _tensor_call

    path = tmp_path / "state.pt"
    torch.save({"w": _tensor_call(torch.ones(1), 0, (100,), (0,))}, path)
    assert torch.equal(read_pickled_state(path)["w"], torch.ones(100))
    with pytest.raises(NeuligError, match=r"a tensor of size \(100,\) takes its tensor bytes past 399"):
        read_pickled_state(path, limits=Limits(max_bytes=399))


def test_unknown_callables_are_refused_even_when_torch_allows_them(tmp_path):
    """torch's own weights_only list has bytearray and set; here they take only bounded arguments."""
    from neulig.models.pickled import read_pickled_state

    path = tmp_path / "state.pt"
    torch.save({"w": torch.ones(1), "names": Reduce(set, (["a", "b"],)), "raw": Reduce(bytearray, (b"xy",))}, path)
    assert list(read_pickled_state(path)) == ["w"]


@pytest.mark.parametrize("name", ["torchscript_setstate", *(pytest.param(n, marks=pytest.mark.slow) for n in (
    "bytearray_bomb", "nested_dicts_3000", "sparse_out_of_range"))])  # each run costs a CLI start
def test_the_command_line_answers_in_one_line_with_exit_2(name, visual, tmp_path):
    from tests.integration.test_cli_failures import assert_one_error, given, run_cli

    path, marker = _build(name, tmp_path / "files", visual)
    proc = run_cli(tmp_path, "merge=average", given("digits", path))
    assert_one_error(proc, f".*{__import__('re').escape(str(path))}.*")
    assert not marker.exists()
