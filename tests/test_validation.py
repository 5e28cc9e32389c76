"""Every user input is checked before the first stage: the wrong-input matrix (exit 2, one line naming the
key and the fix, no traceback, no cache entry, finished results untouched) and the schemas' positive side
(every option of every group and every experiment validates clean)."""
import json
import re
from pathlib import Path

import pytest
import torch

from robprune.cli import main
from robprune.compose import check_overrides, compose
from robprune.errors import ConfigError, DataError
from robprune.results import read_metrics
from robprune.validate import check_before_stages, reachable_sparsity, validate
from tests.helpers import REPO, robprune

FIX = re.compile(r"e\.g\.|did you mean|; use |; set |; pick |pick a|; remove|; lower|; pass |; quote|set prune|or set |remove it")
NO_GPU = not torch.cuda.is_available()

# (overrides, text the one line must contain: the key or file it names)
MATRIX = [
    # the old matrix of tests/test_cli.py
    (["prune=foo"], "prune=foo"),
    (["dataset=imagenet_lol"], "dataset=imagenet_lol"),
    (["prune.channel_ratio=1.5"], "prune.channel_ratio"),
    (["prune.channel_ratio=-0.1"], "prune.channel_ratio"),
    (["eval.attacks.pgd20.eps=-0.1"], "eval.attacks.pgd20.eps"),
    (["train.objective.attack.steps=0"], "train.objective.attack.steps"),
    (["dataset.train_split=train[abc]"], "dataset.train_split"),
    (["dataset.test_split=test[5:5]"], "dataset.test_split"),
    (["prune.no_such_key=1"], "prune.no_such_key"),
    (["-m", "prune.channel_ratio=0.3,1.2"], "prune.channel_ratio"),
    (["dataset=mnist", "data.root=/nonexistent/mnist"], "/nonexistent/mnist"),
    # types of the root keys
    (["seed=abc"], "seed must be an integer"),
    (["seed=1.5"], "seed must be an integer"),
    (["train_seed=true"], "train_seed"),
    (["seed=[1"], "seed=[1"),
    (["~seed"], "seed is not set"),
    (["threads=-1"], "threads"),
    (["threads=0"], "threads"),
    (["threads=two"], "threads"),
    (["device=gpu"], "device"),
    (["device=cuda:99"], "device=cuda:99"),
    # unknown keys, with and without +
    (["+train.epoch=50"], "did you mean train.epochs?"),
    (["train.epoch=50"], "did you mean train.epochs?"),
    (["eval.attacks.pgd21.steps=3"], "eval.attacks.pgd21"),
    (["+eval.attacks.pgd20.stepz=3"], "eval.attacks.pgd20.stepz"),
    (["+dataset.num_train=5"], "dataset.num_train"),
    # attacks: types, ranges, enums
    (["eval.attacks.pgd20.eps=abc"], "eval.attacks.pgd20.eps"),
    (["eval.attacks.pgd20.step_size=-1"], "eval.attacks.pgd20.step_size"),
    (["eval.attacks.pgd20.restarts=0"], "eval.attacks.pgd20.restarts"),
    (["eval.attacks.pgd20.norm=l3"], "eval.attacks.pgd20.norm"),
    (["eval.attacks.autoattack.norm=linf"], "eval.attacks.autoattack.norm"),
    (["eval.attacks.autoattack.version=standrd"], "eval.attacks.autoattack.version"),
    (["eval.attacks.autoattack.version=custom"], "eval.attacks.autoattack.attacks"),
    (["eval.attacks.autoattack.attacks=[apgd-ce,foo]"], "eval.attacks.autoattack.attacks[1]"),
    (["train.objective.attack.random_start=maybe"], "train.objective.attack.random_start"),
    # evaluation subsets and batches, data, training
    (["eval.batch_size=0"], "eval.batch_size"),
    (["eval.n_examples.pgd20=0"], "eval.n_examples.pgd20"),
    (["+eval.n_examples.pgd30=5"], "eval.n_examples.pgd30"),
    (["eval.large_eps_n=0"], "eval.large_eps_n"),
    (["eval.block_size=0"], "eval.block_size"),
    (["data.batch_size=0"], "data.batch_size"),
    (["train.optimizer.lr=0"], "train.optimizer.lr"),
    (["train.epochs=-1"], "train.epochs"),
    (["finetune=none", "finetune.epochs=2"], "finetune.objective"),
    (["dataset.augment.hflip=maybe"], "dataset.augment.hflip"),
    # the allow-list, up front
    (["finetune.objective._target_=os.system"], "finetune.objective._target_"),
    (["model._target_=builtins.eval"], "model._target_"),
    (["train.optimizer._target_=torch.optim.NoSuchOptimizer"], "train.optimizer._target_"),
    # pruning and quantisation combinations
    (["prune=mrs", "prune.sparsity=null", "prune.channel_ratio=0.5"], "prune.sparsity"),
    (["prune=l2_filter", "prune.criterion=taylor"], "prune.criterion=taylor"),
    (["prune.allocation=mrs"], "prune.allocation=mrs"),
    (["prune=global_magnitude", "prune.ratio_semantics=channel"], "prune.ratio_semantics"),
    # MRPF's score → ratio rule (docs/methods/mrpf.md#step-4)
    (["prune=mrs", "prune.rule=inverted"], "prune.rule"),
    (["prune=mrs", "prune.lam=-0.1"], "prune.lam"),
    (["prune=mrs", "prune.r_min=0.6", "prune.r_max=0.5"], "prune.r_min=0.6 exceeds prune.r_max=0.5"),
    (["prune=mrs", "prune.r_min=0.6"], "prune.r_min=0.6 exceeds prune.r_max_small=0.5"),
    (["prune=mrs", "prune.r_min=-0.1"], "prune.r_min"),
    (["prune=mrs", "prune.r_min=1.0"], "prune.r_min"),
    (["prune=mrs", "prune.r_max=1.0"], "prune.r_max"),
    (["prune=mrs", "prune.r_max_small=1.0"], "prune.r_max_small"),
    (["prune=mrs", "prune.score_floor=0"], "prune.score_floor"),
    (["prune=mrs", "prune.score_floor=1.5"], "prune.score_floor"),
    (["prune=mrs", "prune.small_fraction=1.0"], "prune.small_fraction"),
    (["prune=mrs", "prune.small_fraction=-0.01"], "prune.small_fraction"),
    (["prune=mrs", "prune.normalization=median"], "prune.normalization"),
    (["quant=ptq", "quant.bits=40"], "quant.bits"),
    # model=timm: the name is checked against timm's registry, the options by the schema
    (["model=timm", "model.name=resnet1888"], "model.name='resnet1888' is not a timm model; close matches: resnet18"),
    (["model=timm", "model.stem=tiny"], "model.stem"),
    (["model=timm", "model.drop_rate=1.5"], "model.drop_rate"),
    (["model=timm", "model.nmae=resnet18"], "did you mean model.name?"),
    (["model=torchvision", "model.name=resnet1888"], ("model.name='resnet1888' is not a torchvision classification model; "
                                                      "close matches: resnet18")),
    (["model=torchvision", "model.weights=IMAGENET1K_V9"], ("model.weights=IMAGENET1K_V9 is not a weight of torchvision's "
                                                            "resnet18 (it has IMAGENET1K_V1, DEFAULT)")),
    (["dataset=tiny_imagenet", "data.root=/nonexistent/tiny"], "/nonexistent/tiny"),
    # sharpness-aware optimizers and pruning during training (AdaSAP)
    (["finetune=asam", "finetune.sharpness.rho=0"], "finetune.sharpness.rho"),
    (["finetune=asam", "finetune.sharpness.method=sharp"], "finetune.sharpness.method"),
    (["+train.sharpness.method=sam", "+train.sharpness.rho=-1"], "train.sharpness.rho"),
    (["prune=adasap", "prune.during_training.sharpness.rho_min=3.0"], "rho_min (3.0) is above"),
    (["prune=adasap", "prune.criterion=l1"], "prune.criterion"),
    # corruption robustness (eval.corruptions): names, severities, sources
    (["eval=corruptions", "eval.corruptions.names=[fogg]"], "unknown corruption 'fogg' (did you mean fog?); valid: gaussian_noise"),
    (["+eval/corruptions@eval.corruptions=default", "eval.corruptions.names=[snow,pixelation]"], "eval.corruptions.names"),
    (["eval=corruptions", "eval.corruptions.severities=[1,6]"], "eval.corruptions.severities has 6"),
    (["eval=corruptions", "eval.corruptions.severities=[0]"], "eval.corruptions.severities has 0"),
    (["eval=corruptions", "eval.corruptions.severities=[]"], "eval.corruptions.severities is empty"),
    (["eval=corruptions", "eval.corruptions.names=[fog,fog]"], "eval.corruptions.names lists fog twice"),
    (["eval=corruptions", "eval.corruptions.n_examples=0"], "eval.corruptions.n_examples"),
    (["eval=corruptions", "eval.corruptions.source=webcam"], "eval.corruptions.source"),
    (["eval=corruptions", "eval.corruptions.source=files"], "eval.corruptions.root=null is not a folder"),
    (["eval=corruptions", "eval.corruptions.source=folders", "eval.corruptions.root=/nonexistent/c"], "/nonexistent/c"),
    (["eval=corruptions", "eval.corruptions.frost_textures=/nonexistent/frost"], "eval.corruptions.frost_textures"),
    (["eval=corruptions", "+eval.corruptions.severity=3"], "did you mean eval.corruptions.severities?"),
    # text: the modality must match; attack parameters are checked up front (the data-dependent cases: test_text_cli.py)
    (["+experiment=text_sst2", "model=cnn8"], "does not take text inputs"),
    (["+experiment=text_sst2", "eval=default"], "is an image attack"),
    (["+experiment=text_sst2", "prune=l1_filter"], "prune=l1_filter prunes image models"),
    (["+experiment=text_sst2", "dataset.max_length=1"], "dataset.max_length"),
    (["+experiment=text_sst2", "eval.attacks.textfooler.query_budget=0"], "eval.attacks.textfooler.query_budget"),
    (["+experiment=text_sst2", "eval.attacks.textbugger.max_words_changed=1.5"], "eval.attacks.textbugger.max_words_changed"),
    (["+experiment=text_sst2", "eval.attacks.textfooler.min_cos=2"], "eval.attacks.textfooler.min_cos"),
    (["+experiment=text_sst2", "+attack@eval.attacks.ba=bert_attack"], "eval.attacks.ba.mlm"),
    (["eval=text"], "is a text attack"),
    # trainer (robprune.train.trainer): devices against the machine, choices, objectives DDP cannot average
    (["trainer.devices=4096"], "trainer.devices=4096"),
    (["trainer.devices=0"], "trainer.devices"),
    (["trainer.precision=fp16"], "trainer.precision"),
    (["trainer.devices=2", "train.objective._target_=robprune.train.objectives.freelb"], "freelb"),
    (["+experiment=kr_sst2", "trainer.devices=2"], "average.ingredients.freelb_seed3.objective freelb"),
]
if NO_GPU:
    MATRIX.append((["device=cuda"], "device=cuda"))


@pytest.fixture
def finished(tmp_path):
    """A fake finished run directory with known bytes, and a snapshot function over all its files."""
    run = tmp_path / "finished"
    (run / ".hydra").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"clean_acc": 0.9, "seed": 0}))
    (run / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (run / "run.log").write_bytes(b"finished\n")
    return run, lambda: {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def run_main(args: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(["run", *args])
    except SystemExit as exit_:  # a job that fails inside Hydra exits from app.job
        code = exit_.code
    return code, capsys.readouterr().err


def assert_one_line(code: int, err: str, named: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2, (code, err[-1500:])
    assert len(lines) == 1 and "Traceback" not in err, err[-1500:]
    assert named in lines[0] and "Error: " in lines[0], lines[0]
    assert FIX.search(lines[0]), f"no fix hint in: {lines[0]}"
    return lines[0]


def no_cache_entry(cache: Path) -> bool:
    return not cache.exists() or {p.name for p in cache.iterdir()} <= {"datasets"}


@pytest.mark.parametrize("overrides,named", MATRIX, ids=[" ".join(m[0]) for m in MATRIX])
def test_wrong_input_exit_2_one_line_nothing_written(overrides, named, finished, tmp_path, capsys):
    run, snapshot = finished
    before = snapshot()
    code, err = run_main([*overrides, f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run}"], capsys)
    assert_one_line(code, err, named)
    assert no_cache_entry(tmp_path / "cache")
    assert snapshot() == before


def test_wrong_input_real_command(finished, tmp_path):
    run, snapshot = finished
    before = snapshot()
    res = robprune(["run", "+train.epoch=50", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert_one_line(res.returncode, res.stderr, "did you mean train.epochs?")
    assert no_cache_entry(tmp_path / "cache") and snapshot() == before


def test_unreachable_sparsity_fails_before_training(finished, tmp_path):
    """prune.sparsity depends on the model: the pipeline checks it after building the dense model."""
    run, snapshot = finished
    before = snapshot()
    res = robprune(["run", "prune.sparsity=0.99", f"cache_dir={tmp_path / 'cache'}",
                    f"hydra.run.dir={tmp_path / 'new_run'}"], cwd=tmp_path)
    line = assert_one_line(res.returncode, res.stderr, "prune.sparsity=0.99")
    assert "reachable" in line
    assert "reachable" not in res.stdout                                  # one copy on the console, not two
    assert line in (tmp_path / "new_run" / "run.log").read_text()         # and the run's log records it
    assert no_cache_entry(tmp_path / "cache") and snapshot() == before


def _dense(cfg):
    from robprune.measure import dense_model

    arch = {"model": dict(cfg.model), "in_channels": 1, "image_size": 8, "num_classes": 10, "mean": [0.3], "std": [0.4]}
    return dense_model(arch), torch.zeros(1, 1, 8, 8)


@pytest.mark.parametrize("overrides,ok", [
    (["prune.sparsity=0.5"], True), (["prune.sparsity=0.99"], False), (["prune=mrs", "prune.sparsity=0.99"], False),
    (["prune=global_magnitude", "prune.sparsity=0.99"], True),
    (["prune=global_magnitude", "prune.sparsity=0.99", "prune.exclude_linear=true"], False),
    (["prune.channel_ratio=0.9"], True), (["prune=none"], True),
])
def test_check_before_stages(overrides, ok):
    cfg = compose(overrides)
    model, x = _dense(cfg)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if ok:
        check_before_stages(cfg, model, x)
    else:
        with pytest.raises(ConfigError, match=r"prune\.sparsity=0\.99 is not reachable.*e\.g\. prune\.sparsity=0\.\d\d"):
            check_before_stages(cfg, model, x)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # the model is left untouched


def test_reachable_sparsity_is_what_allocation_reaches():
    """The limit is the top of the allocator's bisection: just above it the real cut refuses, at it it works."""
    from robprune.prune import prune_model

    cfg = compose(["prune.sparsity=0.5"])
    model, x = _dense(cfg)
    limit = reachable_sparsity(cfg.prune, model, x)
    assert 0.5 < limit < 1
    with pytest.raises(ConfigError, match="not reachable"):
        prune_model(model, compose([f"prune.sparsity={limit + 0.001:.4f}"]).prune, example_inputs=x)
    info = prune_model(model, compose([f"prune.sparsity={limit - 0.001:.4f}"]).prune, example_inputs=x)
    assert info["sparsity"] == pytest.approx(limit, abs=0.01)


@pytest.mark.parametrize("rule,ok", [("bounded", False), ("inverse", True)])
def test_reachability_counts_r_max_small(rule, ok):
    """Under rule bounded the most removable sparsity caps small groups at r_max_small (small_cnn: both
    prunable convs are small at small_fraction=0.5); the inverse rule has no such cap."""
    cfg = compose(["prune=mrs", "prune.sparsity=0.5", "prune.small_fraction=0.5", "prune.r_max_small=0.1", f"prune.rule={rule}"])
    model, x = _dense(cfg)
    limit = reachable_sparsity(cfg.prune, model, x)
    if ok:
        check_before_stages(cfg, model, x)
        assert limit > 0.5
    else:
        with pytest.raises(ConfigError, match=r"prune\.sparsity=0\.5 is not reachable.*prune\.r_max_small=0\.1.*e\.g\. prune\.sparsity="):
            check_before_stages(cfg, model, x)
        assert limit < 0.5 < reachable_sparsity(compose(["prune=mrs", "prune.small_fraction=0.5", "prune.r_max_small=0.95"]).prune, model, x)


def test_reachable_sparsity_is_what_bounded_mrs_reaches():
    """The bounded rule's limit (small groups at r_max_small) is the top of its bisection: just above it the
    real cut refuses, just below it works."""
    from robprune.prune import PruneContext, prune_model

    cfg = compose(["prune=mrs", "prune.small_fraction=0.5"])
    model, x = _dense(cfg)
    limit = reachable_sparsity(cfg.prune, model, x)
    names = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    context = PruneContext(x, scores={"layers": [{"name": n, "mrs": 0.1 * (i + 1)} for i, n in enumerate(names)]})
    with pytest.raises(ConfigError, match="not reachable"):
        prune_model(model, compose(["prune=mrs", "prune.small_fraction=0.5", f"prune.sparsity={limit + 0.001:.4f}"]).prune, context)
    info = prune_model(model, compose(["prune=mrs", "prune.small_fraction=0.5", f"prune.sparsity={limit - 0.001:.4f}"]).prune, context)
    assert info["sparsity"] == pytest.approx(limit, abs=0.01)


TEXT_OPTIONS = {"dataset": ("sst2", "imdb", "ag_news"), "model": ("minilm", "bert"), "train": ("text_finetune", "freelb"),
                "eval": ("text",), "prune": ("kr_obs", "sparsegpt", "magnitude")}  # the text modality's options


ZOO_OPTIONS = {"model": ("robustbench",)}  # the RobustBench zoo's models take their own datasets only (cifar10, cifar100, imagenet)


def _is_text_attack(path: Path) -> bool:
    return "robprune.attacks.text." in path.read_text()


def _zip_options() -> list[list[str]]:
    """Every option of every group at least once (options of different groups combined row by row),
    images and text separately (a text dataset takes a text model, text attacks and no pruning yet)."""
    groups = {g: sorted(p.stem for p in (REPO / "conf" / g).glob("*.yaml") if p.stem not in TEXT_OPTIONS.get(g, ())
                        and p.stem not in ZOO_OPTIONS.get(g, ()))
              for g in ("dataset", "model", "train", "prune", "quant", "finetune", "eval")}
    rows = max(len(v) for v in groups.values())
    combos = [[f"{g}={opts[i % len(opts)]}" for g, opts in groups.items()] for i in range(rows)]
    for row in combos:  # airbench's alternating flips need images in memory (refused on streamed data: tested in test_fast)
        if row[0].split("=")[1] in ("imagenet", "imagenet_v2", "webdataset"):
            row += [f"{g}.alternate_flip=false" for g in ("train", "finetune") if f"{g}=fast_standard" in row or f"{g}=fast_at" in row]
    attacks = sorted(p for p in (REPO / "conf" / "attack").glob("*.yaml"))
    combos.append([f"+attack@eval.attacks.extra_{a.stem}={a.stem}" for a in attacks if not _is_text_attack(a)])
    combos += [[f"+compress={p.stem}"] for p in sorted((REPO / "conf" / "compress").glob("*.yaml"))]
    text_rows = max(len(v) for v in TEXT_OPTIONS.values())
    text = ["quant=none", "finetune=none"]
    combos += [[*text, *(f"{g}={opts[i % len(opts)]}" for g, opts in TEXT_OPTIONS.items())] for i in range(text_rows)]
    combos += [["model=robustbench", "dataset=cifar10"], ["model=robustbench", "dataset=cifar100", "model.name=Gowal2020Uncovering"],
               ["model=robustbench", "dataset=imagefolder", "model.dataset=cifar10", "model.threat=L2", "model.name=Engstrom2019Robustness"]]
    combos.append([*text, "prune=none", "dataset=sst2", "model=minilm", "train=text_finetune", "eval=text",
                   *(f"+attack@eval.attacks.extra_{a.stem}={a.stem}" for a in attacks if _is_text_attack(a)),
                   "eval.attacks.extra_bert_attack.mlm=path/to/bert-base-uncased"])  # BERT-Attack's masked LM is required
    return combos


@pytest.mark.parametrize("overrides", [[]] + _zip_options(), ids=lambda o: " ".join(o) or "default")
def test_every_option_validates(overrides, tmp_path):
    (tmp_path / "imagenet-c").mkdir()  # eval=imagenet reads the ImageNet-C folders (validation checks the folder)
    validate(compose([*overrides, f"data.root={tmp_path}"]))


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")))
def test_every_experiment_validates(name, tmp_path):
    (tmp_path / "imagenet-c").mkdir()
    validate(compose([f"+experiment={name}", f"data.root={tmp_path}"]))


def test_experiment_grid_is_checked_before_a_sweep(tmp_path):
    """check_overrides also walks the values of hydra.sweeper.params (what -m runs); a bad one fails."""
    from robprune.compose import sweeper_overrides

    overrides = ["+experiment=adverfine_mnist", f"data.root={tmp_path}", "seed=0"]
    axes = sweeper_overrides(compose(overrides, with_hydra=True), overrides)
    assert [a.split("=")[0] for a in axes] == ["train", "compress", "finetune"]  # seed=0 given: that axis is not swept
    check_overrides(overrides)


@pytest.mark.parametrize("content", [bytes(range(256)) * 4, b'{"clean_acc": 0.9', b"[1, 2]", b"\"text\""],
                         ids=["random bytes", "invalid JSON", "a list", "a string"])
def test_corrupt_metrics_json_is_a_data_error(content, tmp_path):
    path = tmp_path / "run" / "metrics.json"
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_metrics(path)
    message = str(err.value)
    assert message.startswith(f"DataError: {path}: not a valid metrics.json (") and "delete it or re-run" in message
    assert "\n" not in message


def test_table_on_corrupt_metrics_json(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_bytes(bytes(range(256)))
    code = main(["table", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not a valid metrics.json" in err, err


def test_tiny_imagenet_without_val_annotations(finished, tmp_path, capsys):
    """A Tiny-ImageNet tree whose val/val_annotations.txt is missing: one line naming the file, exit 2."""
    from tests.test_tiny_imagenet import make_tiny_imagenet

    run, snapshot = finished
    before = snapshot()
    base = make_tiny_imagenet(tmp_path / "data")
    (base / "val" / "val_annotations.txt").unlink()
    code, err = run_main(["dataset=tiny_imagenet", "dataset.num_classes=null", f"data.root={tmp_path / 'data'}",
                          f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'new_run'}"], capsys)
    line = assert_one_line(code, err, str(base / "val" / "val_annotations.txt"))
    assert "is missing" in line and "data.download=true" in line
    assert no_cache_entry(tmp_path / "cache") and snapshot() == before


def test_timm_pretrained_offline_real_command(finished, tmp_path):
    """model.init=pretrained without the weights (offline, empty caches): one line naming the key and a local
    file as the fix, exit 2, nothing run."""
    pytest.importorskip("timm")
    run, snapshot = finished
    before = snapshot()
    res = robprune(["run", "model=timm", "model.name=resnet10t", "model.init=pretrained", "model.head=new",
                    "dataset=synthetic", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'new_run'}"],
                   cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
                                      "TORCH_HOME": str(tmp_path / "torch")})
    line = assert_one_line(res.returncode, res.stderr, "model.init=pretrained")
    assert "resnet10t" in line and "model.init=path/to/weights.safetensors" in line
    assert no_cache_entry(tmp_path / "cache") and snapshot() == before


def test_timm_attention_cut_fails_before_training(finished, tmp_path, capsys):
    """MobileViT with every Linear prunable: Torch-Pruning would cut attention heads apart; refused after the
    dense model is built, before the first stage."""
    run, snapshot = finished
    before = snapshot()
    code, err = run_main(["model=timm", "model.name=mobilevit_xxs", "dataset=synthetic", "prune.exclude_linear=false",
                          f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'new_run'}"], capsys)
    line = assert_one_line(code, err, "model.name=mobilevit_xxs")
    assert "heads" in line and "set prune.exclude_linear=true" in line
    assert no_cache_entry(tmp_path / "cache") and snapshot() == before


def _corruption_files(root: Path, damage: str) -> Path:
    """CIFAR-10-C layout for the digits test split (355 grey 8x8 images), with one thing wrong."""
    import numpy as np

    from robprune.data import build_data

    y = build_data(compose([]).dataset).test_y.numpy()
    root.mkdir(parents=True)
    shape = {"shape": (5 * 355, 8, 4, 2), "count": (5 * 355 - 5, 8, 8, 1)}.get(damage, (5 * 355, 8, 8, 1))
    np.save(root / "fog.npy", np.zeros(shape, dtype=np.float64 if damage == "dtype" else np.uint8))
    np.save(root / "labels.npy", np.tile(np.roll(y, 3) if damage == "labels" else y, 5).astype(np.uint8))
    return root


@pytest.mark.parametrize("damage,named", [("shape", "fog.npy holds uint8 (1775, 8, 4, 2)"),
                                          ("dtype", "fog.npy holds float64 (1775, 8, 8, 1)"),
                                          ("count", "the files hold 354 images per severity but the run's test split"),
                                          ("labels", "labels.npy does not match the run's test labels")])
def test_wrong_corruption_files_fail_before_training(damage, named, finished, tmp_path, capsys):
    """eval.corruptions.source=files with a .npy of the wrong shape, dtype or length, or labels that are not
    the run's: one line naming the file, exit 2, before any stage (no cache entry)."""
    run, snapshot = finished
    before = snapshot()
    root = _corruption_files(tmp_path / "c10c", damage)
    code, err = run_main(["eval=pgd", "+eval/corruptions@eval.corruptions=default", "eval.corruptions.source=files",
                          f"eval.corruptions.root={root}", "eval.corruptions.names=[fog]",
                          f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'new_run'}"], capsys)
    assert_one_line(code, err, named)
    assert no_cache_entry(tmp_path / "cache") and snapshot() == before
