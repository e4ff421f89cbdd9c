"""One reader for the community's expert checkpoints, whatever their format and folder layout.

Formats (:func:`source_format`): a ``.safetensors`` file (an open_clip state dict); a ``.pt`` /
``.pth`` / ``.bin`` file holding a state dict or a whole pickled module (the task-vectors
``ImageEncoder`` of Ilharco et al., arXiv 2212.04089), both read by :mod:`neulig.models.torch_file`
without running anything, within the limits of the architecture (docs/security.md); a Hugging Face
CLIP folder (``config.json`` with ``model_type`` ``clip`` or ``clip_vision_model``, read by
:mod:`neulig.models.hf_clip`).
:func:`read_visual` gives the image tower of any of them, checked against the architecture.

Folder layouts (:func:`discover_experts`) for a directory of experts:

- task vectors: ``<root>/<model>/<Dataset>/finetuned.pt`` and the base ``<root>/<model>/zeroshot.pt``
  (``<model>`` like ``ViT-B-32``; ``<root>`` may also be the model folder itself);
- FusionBench (Tang et al., arXiv 2406.03280): Hugging Face folders ``<root>/<base>_<dataset>`` (e.g.
  ``clip-vit-base-patch32_sun397``) and the base ``<root>/<base>``.

Folder names map onto neulig's lower-case dataset names through :data:`DATASET_NAMES`.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from neulig.errors import NeuligError, unreadable
from neulig.merging.state_dict import under_prefix
from neulig.models.experts import checked_state, image_tower
from neulig.models.hf_clip import HF_MODEL_TYPES
from neulig.models.read_limits import Limits, limits_for

StateDict = dict[str, Tensor]
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
SAFETENSORS = ".safetensors"

# The one naming table: a folder's dataset name, lower-cased without "-", "_" or spaces -> neulig's name.
# Names not in it map to themselves lower-cased (neulig's own datasets).
DATASET_NAMES: dict[str, str] = {
    "sun397": "sun397",
    "cars": "cars", "stanfordcars": "cars",
    "resisc45": "resisc45", "nwpuresisc45": "resisc45",
    "dtd": "dtd",
    "eurosat": "eurosat",
    "gtsrb": "gtsrb",
    "mnist": "mnist",
    "svhn": "svhn",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "stl10": "stl10",
}
TV_EXPERT, TV_BASE = "finetuned.pt", "zeroshot.pt"


def dataset_name(folder_name: str) -> str:
    """neulig's name for a dataset folder name: ``SUN397``, ``Cars``, ``stanford-cars``, ``EuroSAT``,
    task-vectors' ``<Dataset>Val`` training folders, ...; unknown names lower-cased."""
    key = re.sub(r"[-_\s]", "", folder_name.lower())
    if key not in DATASET_NAMES and key.endswith("val") and key[:-3] in DATASET_NAMES:
        key = key[:-3]
    return DATASET_NAMES.get(key, folder_name.lower())


# ---- formats ------------------------------------------------------------------------------------


def hf_model_type(folder: Path) -> str | None:
    """The ``model_type`` in ``folder/config.json`` (None without a readable one)."""
    import json

    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config.get("model_type") if isinstance(config, dict) else None


def source_format(path: Path) -> str:
    """``"safetensors"``, ``"torch"`` (a state dict or a pickled module) or ``"hf"`` (a Hugging Face CLIP
    folder); one-line error for anything else."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise NeuligError(f"expert {path} is a folder without config.json; give a Hugging Face CLIP folder "
                              f"or a {SAFETENSORS}/{'/'.join(TORCH_SUFFIXES)} file")
        found = hf_model_type(path)
        if found not in HF_MODEL_TYPES:
            raise NeuligError(f"expert {path}/config.json has model_type {found!r}; only CLIP folders "
                              f"({', '.join(HF_MODEL_TYPES)}) can be read")
        return "hf"
    if not path.is_file():
        raise NeuligError(f"expert {path} not found; give an existing file or folder")
    if path.suffix == SAFETENSORS:
        return "safetensors"
    if path.suffix in TORCH_SUFFIXES:
        return "torch"
    raise NeuligError(f"expert {path} must be a {SAFETENSORS}, {', '.join(TORCH_SUFFIXES)} file or a Hugging Face "
                      f"CLIP folder, got {path.suffix or 'no suffix'!r}")


def read_torch_state(path: Path, where: str, limits: Limits | None = None) -> StateDict:
    """A ``.pt``/``.pth``/``.bin`` file's flat state dict (a state dict or a pickled module), read by
    :mod:`neulig.models.torch_file` within ``limits``, never by ``torch.load``."""
    from neulig.models.pickled import read_pickled_state

    return read_pickled_state(path, where, limits)


def read_file_state(path: Path, where: str, limits: Limits | None = None) -> StateDict:
    """The flat state dict of a ``.safetensors`` or torch file."""
    if source_format(path) == "torch":
        return read_torch_state(path, where, limits)
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # every reader's error means the same to the user
        raise unreadable(f"expert checkpoint {where}", err, "it may be truncated: export it again") from err


BaseProjection = Tensor | Callable[[], Tensor] | str | Path | None


def _projection(base: BaseProjection, layout: Mapping, arch: str) -> Tensor | None:
    """open_clip's ``proj`` from ``base``: the tensor itself, a function that gives it (read once for many
    experts, see :func:`projection_of`), or the image tower of a base model file/folder."""
    if base is None or isinstance(base, Tensor):
        return base
    if callable(base):
        return base()
    return read_visual(base, layout, arch)["proj"]


def projection_of(base: str | Path | None, layout: Mapping, arch: str) -> Callable[[], Tensor] | None:
    """The base model's ``proj``, read on first use and then remembered: many experts of one base
    (FusionBench's CLIPVisionModel folders) need it, and the base is a whole CLIP."""
    return None if base is None else functools.cache(lambda: read_visual(base, layout, arch)["proj"])


def read_visual(path: str | Path, layout: Mapping[str, Tensor], arch: str,
                base_projection: BaseProjection = None, where: str | None = None) -> StateDict:
    """The image-tower state dict (``clip.visual.state_dict()``) of the expert at ``path``, whatever
    its format, checked against ``layout`` (the encoder's state dict; meta tensors are enough): keys in
    its order, shapes equal (else one line naming the first mismatching key, expected vs found),
    floating-point tensors cast to its dtypes.

    ``base_projection``: for a Hugging Face ``CLIPVisionModel`` (no ``visual_projection``, as
    FusionBench publishes its experts), the projection ``proj`` (``[width, embed_dim]``) or the base
    model (any format) to take it from. ``where`` names the expert in errors (default: the path)."""
    path = Path(path)
    where = where or str(path)
    kind = source_format(path)
    limits = limits_for(arch, layout)
    if kind != "hf":
        state = read_file_state(path, where, limits)
        if any(k.startswith("vision_model.") or k == "embeddings.patch_embedding.weight" for k in state):
            if hf_model_type(path.parent) not in HF_MODEL_TYPES:
                raise NeuligError(f"expert {where} holds Hugging Face CLIP weights without a config.json beside it; "
                                  "give the whole Hugging Face folder")
            return read_visual(path.parent, layout, arch, base_projection, where)
        return image_tower(state, layout, arch, where)
    from neulig.models.hf_clip import arch_mismatch, hf_to_open_clip, read_hf_config, read_hf_weights

    hf_state = read_hf_weights(path, limits)
    needs_projection = "visual_projection.weight" not in hf_state
    projection = _projection(base_projection, layout, arch) if needs_projection else None
    state, cfg, _ = hf_to_open_clip(hf_state, read_hf_config(path), projection, where)
    problem = arch_mismatch(cfg, arch)
    if problem:
        raise NeuligError(f"expert {where} does not fit {arch}: {problem}; give an expert fine-tuned from {arch}")
    return checked_state(under_prefix(state, "visual."), layout, arch, where)


def read_clip(path: str | Path, layout: Mapping[str, Tensor], visual_layout: Mapping[str, Tensor], arch: str,
              where: str | None = None) -> tuple[StateDict, bool]:
    """Base weights in any format: ``(the whole CLIP state dict, True)`` when ``path`` holds one (text
    tower included: a Hugging Face ``CLIPModel``, an open_clip CLIP state dict, a pickled CLIP), else
    ``(its image tower, False)`` (a task-vectors ``zeroshot.pt``, whose text transformer was deleted)."""
    path = Path(path)
    where = where or str(path)
    limits = limits_for(arch, layout, visual_layout)
    if source_format(path) == "hf":
        from neulig.models.hf_clip import arch_mismatch, hf_to_open_clip, read_hf_config, read_hf_weights

        # converted only: its architecture is the configured one, never looked up or registered in open_clip
        state, cfg, has_text = hf_to_open_clip(read_hf_weights(path, limits), read_hf_config(path), None, where)
        problem = arch_mismatch(cfg, arch)
        if problem:
            raise NeuligError(f"base weights {where} do not fit {arch}: {problem}")
        if has_text:
            return checked_state(state, layout, arch, where), True
        return checked_state(under_prefix(state, "visual."), visual_layout, arch, where), False
    state = read_file_state(path, where, limits)
    try:
        return image_tower(state, layout, arch, where), True
    except NeuligError:  # no whole CLIP under any prefix: the image tower alone
        return image_tower(state, visual_layout, arch, where), False


# ---- folder layouts -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpertDir:
    """Experts found in a folder: ``layout`` (``"task_vectors"`` or ``"fusionbench"``), {dataset: path}
    for the requested datasets, and the base model's path (None when the folder has none)."""

    layout: str
    experts: dict[str, Path]
    base: Path | None


def _task_vector_models(root: Path) -> list[Path]:
    def is_model(folder: Path) -> bool:
        return (folder / TV_BASE).is_file() or any(folder.glob(f"*/{TV_EXPERT}"))

    if is_model(root):
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and is_model(p))


def _fusionbench_bases(root: Path) -> dict[str, dict[str, Path]]:
    """{base name: {dataset folder part: folder}} of the ``<base>_<dataset>`` Hugging Face folders."""
    out: dict[str, dict[str, Path]] = {}
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and "_" in folder.name and (folder / "config.json").is_file():
            base, _, dataset = folder.name.partition("_")
            out.setdefault(base, {})[dataset] = folder
    return out


def _pick(found: Sequence[str], model: str | None, root: Path, what: str) -> str:
    names = list(found)
    if model is not None:
        for candidate in (model, model.removesuffix("-quickgelu")):
            if candidate in names:
                return candidate
        raise NeuligError(f"experts_dir {root} has no {what} {model!r}; found {', '.join(names)}")
    if len(names) > 1:
        raise NeuligError(f"experts_dir {root} holds several {what}s ({', '.join(names)}); name the one to use")
    return names[0]


def _select(root: Path, available: Mapping[str, tuple[str, Path]], datasets: Sequence[str], looked: str) -> dict:
    """{dataset: path} for ``datasets`` from ``available`` ({neulig name: (folder name, path)})."""
    out = {}
    for name in datasets:
        key = dataset_name(name)
        if key not in available:
            found = ", ".join(f"{folder} ({n})" for n, (folder, _) in sorted(available.items())) or "nothing"
            raise NeuligError(f"experts_dir {root} has no expert for {name} (looked for {looked}); found: {found}")
        out[key] = available[key][1]
    return out


def discover_experts(root: str | Path, datasets: Sequence[str], model: str | None = None) -> ExpertDir:
    """The experts of ``datasets`` (neulig names) in ``root``, in the task-vectors or FusionBench layout.

    ``model``: the model folder (task vectors: e.g. ``ViT-B-32``; an open_clip arch name with
    ``-quickgelu`` is accepted) or base name (FusionBench: e.g. ``clip-vit-base-patch32``); needed
    only when ``root`` holds several. One-line errors for a missing root, an unknown layout, or a
    dataset without an expert (listing what was found)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise NeuligError(f"experts_dir {root} is not a folder; give the folder holding the experts")
    bases = _fusionbench_bases(root)
    if bases:
        base_name = _pick(sorted(bases), model, root, "FusionBench base")
        available = {dataset_name(part): (folder.name, folder) for part, folder in bases[base_name].items()}
        experts = _select(root, available, datasets, f"{root}/{base_name}_<dataset>/")
        base = root / base_name
        return ExpertDir("fusionbench", experts, base if (base / "config.json").is_file() else None)
    models = _task_vector_models(root)
    if not models:
        entries = ", ".join(sorted(p.name for p in root.iterdir())[:8]) or "nothing"
        raise NeuligError(f"experts_dir {root} is in no known layout (task vectors: <model>/<Dataset>/{TV_EXPERT}; "
                          f"FusionBench: <base>_<dataset>/ Hugging Face folders); found: {entries}")
    by_name = {p.name: p for p in models}
    folder = models[0] if models == [root] else by_name[_pick(sorted(by_name), model, root, "model folder")]
    available: dict[str, tuple[str, Path]] = {}
    for path in sorted(folder.glob(f"*/{TV_EXPERT}")):  # "SUN397" sorts before "SUN397Val" and wins
        available.setdefault(dataset_name(path.parent.name), (path.parent.name, path))
    experts = _select(root, available, datasets, f"{folder}/<Dataset>/{TV_EXPERT}")
    base = folder / TV_BASE
    return ExpertDir("task_vectors", experts, base if base.is_file() else None)
