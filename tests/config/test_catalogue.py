"""A catalogue of wrong option values, each through the CLI entry point ``neulig.run.main``.

Every case must end in exactly one stderr line ``neulig: error: <option>=<value>: <what is allowed>``,
exit code 2, no traceback, and leave the cache and the MLflow store byte-identical. Most cases run
``main()`` in this process (milliseconds each); a few run ``python -m neulig.run`` as a user would.
"""
from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

# (command-line arguments, the option the error must name)
CASES = [
    # root options
    (["seed=abc"], "seed"), (["seed=1.5"], "seed"), (["objective=accuracy"], "objective"),
    (["ensemble.level=votes"], "ensemble.level"), (["eval.batch_size=0"], "eval.batch_size"),
    (["eval.batch_size=abc"], "eval.batch_size"), (["save_merged=maybe"], "save_merged"),
    (["progress=sometimes"], "progress"), (["nosuch=1"], "nosuch"), (["+nosuch=1"], "nosuch"),
    (["paths.nosuch=x"], "paths.nosuch"),
    # model
    (["model=nosuch"], "model"), (["model.image_size=0"], "model.image_size"),
    (["model.image_size=abc"], "model.image_size"), (["model.finetune.lr=abc"], "model.finetune.lr"),
    (["model.finetune.lr=-1"], "model.finetune.lr"), (["model.finetune.lr=0"], "model.finetune.lr"),
    (["model.finetune.epochs=0"], "model.finetune.epochs"), (["model.finetune.batch_size=-4"], "model.finetune.batch_size"),
    (["model.finetune.weight_decay=-0.1"], "model.finetune.weight_decay"),
    (["model.finetune.warmup_steps=-1"], "model.finetune.warmup_steps"),
    (["model.finetune.grad_clip=-1"], "model.finetune.grad_clip"),
    (["model.finetune.num_workers=-1"], "model.finetune.num_workers"),
    (["model.finetune.epochs_per_dataset={digits:0}"], "model.finetune.epochs_per_dataset.digits"),
    (["model.pretrain.steps=0"], "model.pretrain.steps"), (["model.pretrain.lr=abc"], "model.pretrain.lr"),
    (["model.origins=[]"], "model.origins"), (["model.origins=[a,b]"], "model.origins"),
    (["model.experts={nosuch:x.pt}"], "model.experts.nosuch"), (["model.foo=1"], "model.foo"),
    (["model.pretrained=null", "model.origins=[1,2]"], "model.origins"),
    # data
    (["data=nosuch"], "data"), (["data.datasets=[digits]"], "data.datasets"),
    (["data.datasets=[digits,digits]"], "data.datasets"), (["data.datasets=[digits,nosuch]"], "data.datasets"),
    (["data.datasets=[digits,DIGITS]"], "data.datasets"),
    (["data.num_co_models=1"], "data.num_co_models"), (["data.num_co_models=5"], "data.num_co_models"),
    (["data.num_co_models=abc"], "data.num_co_models"), (["data.sizes.train=0"], "data.sizes.train"),
    (["data.sizes.test=-3"], "data.sizes.test"), (["data.sizes.val=abc"], "data.sizes.val"),
    (["data.sizes.val=null"], "data.sizes.val"), (["data.sizes=null"], "data.sizes"),
    (["data.split_seed=abc"], "data.split_seed"), (["data.download=perhaps"], "data.download"),
    (["data.source=kaggle"], "data.source"), (["data.num_workers=-1"], "data.num_workers"),
    (["data.num_workers=many"], "data.num_workers"),
    # merge: every kind, every method
    (["merge=nosuch"], "merge"), (["merge.kind=other"], "merge.kind"),
    (["merge.runner=neulig.methods.nosuch.run"], "merge.runner"), (["merge.alignment=semi"], "merge.alignment"),
    (["merge.loss=foo"], "merge.loss"), (["merge.batch_weights=last"], "merge.batch_weights"),
    (["merge.offsets_over=foo"], "merge.offsets_over"), (["merge.regularizer=foo"], "merge.regularizer"),
    (["merge.global_epochs=0"], "merge.global_epochs"), (["merge.views=-1"], "merge.views"),
    (["merge.view_scale=[0.9,0.5]"], "merge.view_scale"), (["merge.view_scale=[0,1]"], "merge.view_scale"),
    (["merge.lr=-1"], "merge.lr"), (["merge.lr=abc"], "merge.lr"), (["merge.scaling=0"], "merge.scaling"),
    (["merge.eval_every=0"], "merge.eval_every"), (["merge.batch_size=0"], "merge.batch_size"),
    (["merge.eval_shuffle=maybe"], "merge.eval_shuffle"),
    (["merge=dare", "merge.hparams.p=1.0"], "merge.hparams.p"), (["merge=dare", "merge.hparams.p=-0.1"], "merge.hparams.p"),
    (["merge=task_arithmetic", "merge.hparams.scaling=abc"], "merge.hparams.scaling"),
    (["merge=task_arithmetic", "merge.hparams.nosuch=1"], "merge.hparams.nosuch"),
    (["merge=task_arithmetic", "merge.grid={scaling:[]}"], "merge.grid.scaling"),
    (["merge=task_arithmetic", "merge.grid={density:[0.1]}"], "merge.grid"),
    (["merge=task_arithmetic", "merge.fn=neulig.merging.nosuch.merge"], "merge.fn"),
    (["merge=ties", "merge.hparams.density=0"], "merge.hparams.density"),
    (["merge=ties", "merge.hparams.density=1.5"], "merge.hparams.density"),
    (["merge=ties", "merge.hparams.merge_fn=median"], "merge.hparams.merge_fn"),
    (["merge=ties", "merge.hparams.trim=foo"], "merge.hparams.trim"),
    (["merge=ties", "merge.grid={density:[0.1,2.0]}"], "merge.grid.density"),
    (["merge=model_stock", "merge.hparams.reduce=median"], "merge.hparams.reduce"),
    (["merge=lines", "merge.hparams.task_vector=foo"], "merge.hparams.task_vector"),
    (["merge=lines", "merge.hparams.num_blocks=0"], "merge.hparams.num_blocks"),
    (["merge=fisher", "merge.statistics.mode=guess"], "merge.statistics.mode"),
    (["merge=fisher", "merge.statistics.num_batches=0"], "merge.statistics.num_batches"),
    (["merge=fisher", "merge.hparams.floor=0"], "merge.hparams.floor"),
    (["merge=regmean", "merge.hparams.alpha=2"], "merge.hparams.alpha"),
    (["merge=regmean", "merge.hparams.ridge=-1"], "merge.hparams.ridge"),
    (["merge=weighted_average", "merge.hparams.weights=[1,-1]"], "merge.hparams.weights"),
    (["merge=ensemble", "merge.level=logits"], "merge.level"),  # renamed: the run's ensemble.level
    (["merge=adamerging", "merge.granularity=block"], "merge.granularity"),
    (["merge=adamerging", "merge.steps=0"], "merge.steps"), (["merge=adamerging", "merge.batch_size=0"], "merge.batch_size"),
    (["merge=wemoe", "merge.router_hidden_layers=3"], "merge.router_hidden_layers"),
    (["merge=wemoe", "merge.steps=-5"], "merge.steps"), (["merge=wemoe", "merge.lr=abc"], "merge.lr"),
    # trainer, logger, experiment
    (["trainer=nosuch"], "trainer"), (["trainer.devices=0"], "trainer.devices"), (["trainer.devices=abc"], "trainer.devices"),
    (["trainer.accelerator=tpu"], "trainer.accelerator"), (["trainer.precision=8-bit"], "trainer.precision"),
    (["trainer.strategy=horovod"], "trainer.strategy"), (["trainer.deterministic=maybe"], "trainer.deterministic"),
    (["logger=nosuch"], "logger"), (["logger.enabled=maybe"], "logger.enabled"),
    (["logger.tracking_uri=null"], "logger.tracking_uri"), (["+experiment=nosuch"], "experiment"),
    (["threads=0"], "threads"), (["threads=many"], "threads"),
    # Hydra's flags, read by the pre-check as Hydra reads them
    (["-cn", "nosuch"], "--config-name"), (["--config-name=nosuch"], "--config-name"),
    (["-cp", "/nonexistent/conf"], "--config-path"), (["-cd", "/nonexistent/conf"], "--config-dir"),
    (["-cn", "config", "merge=nosuch"], "merge"),  # an override after a flag, which Hydra would refuse
    # fields of a group whose default is null
    (["data=ta8", "data.sizes.trian=16"], "data.sizes.trian"), (["data=ta8", "data.sizes.train=0"], "data.sizes.train"),
    (["data=ta8", "data.sizes={train:abc}"], "data.sizes.train"),
    (["model=vit_b32", "model.pretrain.steps=3"], "model.pretrain.steps"),
    (["model=vit_b32", "model.pretrain={steps:3}"], "model.pretrain"),
]
LINE = re.compile(r"neulig: error: (?P<option>[^=\s]+)=(?P<value>.*?): (?P<allowed>.+)")


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A project root with a cache entry and an MLflow store, to prove bad runs leave them untouched."""
    root = tmp_path_factory.mktemp("root")
    entry = root / "outputs" / "cache" / "experts" / "0123456789abcdef"
    entry.mkdir(parents=True)
    (entry / "meta.json").write_text('{"key": "0123456789abcdef"}')
    with sqlite3.connect(root / "outputs" / "mlflow.db") as db:
        db.execute("create table runs (id text)")
    return root


def run_main(argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    import hydra

    import neulig.run

    monkeypatch.setattr(sys, "argv", ["neulig.run", *argv])
    monkeypatch.setattr(hydra, "main", lambda **_: pytest.fail(f"{argv} was accepted"))
    with pytest.raises(SystemExit) as exit_info:
        neulig.run.main()
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("args,option", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_value_is_one_line_exit_2_and_touches_nothing(args, option, root, monkeypatch, capsys):
    before = tree_digest(root)
    code, stderr = run_main([f"paths.root_dir={root}", *args], monkeypatch, capsys)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1, stderr
    match = LINE.fullmatch(lines[0])
    assert match, lines[0]
    assert match["option"] == option, lines[0]
    assert "Traceback" not in stderr
    assert tree_digest(root) == before


def test_catalogue_covers_every_group():
    assert len(CASES) >= 60
    groups = {option.split(".")[0] for _, option in CASES}
    assert {"seed", "paths", "model", "data", "merge", "trainer", "logger", "experiment", "ensemble", "eval"} <= groups


@pytest.mark.parametrize("args,answer", [
    (["merge.alignment=semi"], "merge.alignment=semi: renamed: use merge.loss"),
    (["merge.eval_batch_size=64"], "merge.eval_batch_size=64: renamed: use merge.merged_batch_size"),
    (["merge=ensemble", "merge.level=logits"], "merge.level=logits: renamed: use ensemble.level"),
])
def test_a_renamed_option_names_its_new_key(args, answer, monkeypatch, capsys):
    _, stderr = run_main(args, monkeypatch, capsys)
    assert stderr.strip() == f"neulig: error: {answer}"


@pytest.mark.parametrize("args", [["merge.views=-1"], ["seed=abc"], ["data.datasets=[digits]"], ["merge=nosuch"]])
def test_real_process_answers_in_seconds_without_importing_torch(args, tmp_path):
    start = time.time()
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "neulig.run", f"paths.root_dir={tmp_path}", *args],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=60)
    elapsed = time.time() - start
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert proc.returncode == 2
    assert len(errors) == 1 and LINE.fullmatch(errors[0]), proc.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported and "lightning" not in imported
    assert elapsed < 30
    assert not (tmp_path / "outputs").exists()


def test_the_pre_check_composes_the_config_named_by_hydras_flags(tmp_path, monkeypatch, capsys):
    from neulig.run import check_command_line

    extends = "defaults:\n  - config\n  - _self_\n\nseed: {}\n"
    (tmp_path / "bad.yaml").write_text(extends.format("abc"))
    (tmp_path / "good.yaml").write_text(extends.format(7))
    code, stderr = run_main(["-cd", str(tmp_path), "-cn", "bad"], monkeypatch, capsys)
    assert code == 2 and stderr.strip() == "neulig: error: seed=abc: an integer"  # bad.yaml was checked, not config
    check_command_line(["-cd", str(tmp_path), "--config-name=good", "merge=average"])  # accepted
    check_command_line(["-cp", str(REPO / "conf"), "-cn", "config"])
    from neulig.config import compose, load

    assert load(compose([], config_name="good", extra_dir=tmp_path)).seed == 7


def test_fields_of_a_null_defaulted_group_are_set_from_the_command_line():
    from neulig.config import compose, load
    from neulig.run import check_command_line

    for args in (["data=ta8", "data.sizes.train=16"], ["data=ta8", "data.sizes={train:16,val:8,test:8}"]):
        check_command_line(args)
        sizes = load(compose(args)).data.sizes
        assert sizes.train == 16 and (sizes.val, sizes.test) in ((None, None), (8, 8))
    assert load(compose(["data=ta8"])).data.sizes is None  # no cap given: the full splits, as before
    assert load(compose(["data=ta8", "data.sizes=null"])).data.sizes is None
