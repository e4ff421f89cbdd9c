"""Results as files and as the paper's Table 2 layout (per dataset Mer. / Ens. / Gap, and Avg)."""
from __future__ import annotations

import json
from pathlib import Path

from neulig.utils.cache import atomic_write_text


def table2(metrics: dict[str, float], names: list[str], method: str) -> str:
    """Markdown table: reference rows (pretrained, fine-tuned) and the method's merged/ensembled/gap,
    plus Portland's granularities when present."""
    cols = names + ["avg"]
    header = "| method | " + " | ".join(f"{c} Mer. / Ens. / Gap" for c in cols) + " |"
    lines = [header, "|" + "---|" * (len(cols) + 1)]

    def single(kind: str, label: str) -> None:
        if f"acc/{kind}/avg" in metrics:
            lines.append(f"| {label} | " + " | ".join(f"{metrics[f'acc/{kind}/{c}']:.2f}" for c in cols) + " |")

    single("pretrained", "Pre-trained")
    single("finetuned", "Fine-tuned (individual)")
    if "acc/merged/avg" in metrics:
        cells = []
        for c in cols:
            ens = metrics.get(f"acc/ensembled/{c}")
            cells.append(f"{metrics[f'acc/merged/{c}']:.2f} / {ens:.2f} / {metrics[f'gap/{c}']:.2f}" if ens is not None
                         else f"{metrics[f'acc/merged/{c}']:.2f} / – / –")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    for kind, label in (("merged_batch", "per test batch"), ("merged_task", "one merge per dataset"),
                        ("merged_global", "one merge for all")):
        single(kind, f"{method} merged, {label}")
    return "\n".join(lines)


def write_run_files(run_dir: Path, config_yaml: str, results: dict, table: str) -> dict[str, Path]:
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {"config.yaml": run_dir / "config.yaml", "results.json": run_dir / "results.json",
             "results.md": run_dir / "results.md"}
    atomic_write_text(paths["config.yaml"], config_yaml)
    atomic_write_text(paths["results.json"], json.dumps(results, indent=2, sort_keys=True))
    atomic_write_text(paths["results.md"], table + "\n")
    return paths
