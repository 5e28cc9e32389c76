"""File faults on everything robprune persists, drawn by Hypothesis: truncation and flipped bytes at
drawn offsets, a missing file of a pair, a foreign file of a pair (from another save). Each artifact is
either read back exactly as written, or refused in one line (a checkpoint, a finished run's files), or
set aside as ``*.corrupt-<time>``, logged once and rebuilt (cache entries, partial state): never read
wrong. ``pytest --hypothesis-show-statistics`` counts the outcomes per fault."""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from robprune.errors import CheckpointError, DataError

LONG = os.environ.get("ROBPRUNE_FUZZ_LONG") == "1"  # --fuzz-long (tests/conftest.py)
FAST = settings(derandomize=True, max_examples=1000 if LONG else 30, deadline=None)
OFFSET = st.floats(0.0, 1.0, exclude_max=True)  # where in the file, as a fraction of its size
BYTE_FAULT = st.one_of(st.tuples(st.just("truncate"), OFFSET, st.just(0)),
                       st.tuples(st.just("flip"), OFFSET, st.integers(1, 255)))  # (kind, offset, xor mask)


def damage(path: Path, fault: tuple) -> None:
    """Truncate ``path`` at, or flip the byte at (xor mask), the drawn fraction of its size."""
    data = bytearray(path.read_bytes())
    at = int(fault[1] * len(data))
    if fault[0] == "truncate":
        del data[at:]
    else:
        data[at] ^= fault[2]
    path.write_bytes(bytes(data))


def snapshot(root: Path) -> dict[Path, bytes]:
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def restore(root: Path, files: dict[Path, bytes]) -> None:
    """``root`` exactly as snapshotted: set-aside copies and rebuilt files of the last example removed."""
    shutil.rmtree(root, ignore_errors=True)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


@contextmanager
def warnings_of(*names: str):
    """WARNING records of the named loggers while the block runs (caplog is per test, examples are many)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    loggers = [logging.getLogger(n) for n in names]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield records
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def one_line(err: Exception, kind: str, *paths: Path) -> str:
    text = str(err)
    assert text.startswith(f"{kind}: ") and "\n" not in text, text
    assert any(str(p) in text for p in paths), text
    return text


# --- a checkpoint: refused in one line (robprune eval / export / model.init take it from the user) -------------

@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A pruned small_cnn checkpoint "a", a dense one "b" (another model), and "c": a's weights saved again
    with other records (the same weights_sha256, another model.json: it describes the same model, so it
    loads, with its own records)."""
    from robprune.checkpoint import load_checkpoint, save_checkpoint
    from tests.test_checkpoint import arch_of, build, saved

    root = tmp_path_factory.mktemp("faults-ckpt")
    directory, model, arch, _ = saved(root, "small_cnn", prune=True, subdir="a")
    meta = json.loads((directory / "model.json").read_text())
    save_checkpoint(build(arch_of("small_cnn")), root / "b", arch=arch_of("small_cnn"))
    save_checkpoint(model, root / "c", arch=arch, history=meta["pruning_history"], extra={"note": "another save"})
    return root, snapshot(root / "a"), load_checkpoint(directory)


CHECKPOINT_FAULT = st.one_of(
    st.tuples(st.sampled_from(["model.safetensors", "model.json"]), BYTE_FAULT),
    st.tuples(st.sampled_from(["model.safetensors", "model.json"]), st.just(("missing",))),
    st.tuples(st.just("model.json"), st.tuples(st.just("foreign"), st.sampled_from(["b", "c"]))))


@FAST
@given(CHECKPOINT_FAULT)
def test_a_damaged_checkpoint_is_refused_in_one_line_or_loads_exactly(checkpoints, fault):
    from robprune.checkpoint import load_checkpoint

    root, pristine, (model, meta) = checkpoints
    name, kind = fault
    restore(root / "a", pristine)
    path = root / "a" / name
    if kind[0] == "missing":
        path.unlink()
    elif kind[0] == "foreign":
        shutil.copy(root / kind[1] / name, path)
    else:
        damage(path, kind)
    try:
        loaded, loaded_meta = load_checkpoint(root / "a")
    except CheckpointError as err:
        one_line(err, "CheckpointError", root / "a")
        event(f"checkpoint {name} {kind[0]}: refused")
        return
    assert kind[0] != "foreign" or kind[1] == "c", "a model.json of other weights must be refused"
    assert loaded_meta == (meta if kind[0] != "foreign" else {**meta, "note": "another save"})
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    event(f"checkpoint {name} {kind[0]}: loaded, identical weights")  # c's model.json; a flipped header space


# --- a stage cache entry: verified on reuse, moved aside, logged once and rebuilt --------------------------------

@pytest.fixture(scope="module")
def cache_entry(tmp_path_factory, checkpoints):
    """(cache root, the checkpoint it holds, the cache's pristine bytes): a finished entry train/k holding
    checkpoint "a", with its manifest .done and stage.json."""
    from robprune.store import StageCache

    root, source = tmp_path_factory.mktemp("faults-cache"), checkpoints[0] / "a"
    StageCache(root, enabled=True, scratch=root / "s").get("train", "k", lambda work: _copy_checkpoint(source, work, []))
    other = tmp_path_factory.mktemp("faults-cache-other")  # another entry: its files are the foreign ones
    StageCache(other, enabled=True, scratch=other / "s").get(
        "train", "k2", lambda work: _copy_checkpoint(checkpoints[0] / "b", work, []))
    return root, source, snapshot(root), other / "train" / "k2"


def _copy_checkpoint(source: Path, work: Path, built: list) -> None:
    for name in ("model.safetensors", "model.json"):
        shutil.copy(source / name, work / name)
    built.append(work)


@FAST
@example(name=".done", fault=("flip", 0.921875, 1))  # found by --fuzz-long: a flip in a "size" key, KeyError traceback
@given(st.sampled_from(["model.safetensors", "model.json", "stage.json", ".done"]),
       st.one_of(BYTE_FAULT, st.just(("missing",)), st.just(("foreign",))))
def test_a_damaged_cache_entry_is_rebuilt_or_reused_exactly(cache_entry, name, fault):
    from robprune.store import StageCache, check_entry

    root, source, pristine, other = cache_entry
    restore(root, pristine)
    entry = root / "train" / "k"
    if fault[0] == "missing":
        (entry / name).unlink()
    elif fault[0] == "foreign":
        shutil.copy(other / name, entry / name)
    else:
        damage(entry / name, fault)
    built: list = []
    with warnings_of("robprune") as warnings:
        result = StageCache(root, enabled=True, scratch=root / "s").get(
            "train", "k", lambda work: _copy_checkpoint(source, work, built))
    assert check_entry(result.path) is None
    for kept in ("model.safetensors", "model.json"):
        assert (result.path / kept).read_bytes() == (source / kept).read_bytes()
    aside = list((root / "train").glob("k.corrupt-*"))
    if result.reused:
        assert not built and not aside and not warnings
        event(f"cache {name} {fault[0]}: reused, identical")
    else:
        assert len(built) == 1 and len(aside) == 1
        assert len(warnings) == 1 and "train/k failed verification" in warnings[0].getMessage()
        event(f"cache {name} {fault[0]}: moved aside, rebuilt")


# --- a finished run's metrics.json and config.yaml, as robprune table reads them: refused in one line --------------

@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """Two finished runs' config.yaml + metrics.json (written as a run writes them: sealed with the digests
    of themselves and the config) under one results folder, and what robprune table reads from them."""
    from omegaconf import OmegaConf

    from robprune.compose import compose
    from robprune.report.table import load_runs
    from robprune.results import write_metrics
    from tests.helpers import SHRINK

    root = tmp_path_factory.mktemp("faults-runs")
    for name, ratio, acc in (("a", 0.3, 0.8125), ("b", 0.5, 0.75)):
        (root / name).mkdir()
        (root / name / "config.yaml").write_text(OmegaConf.to_yaml(compose([*SHRINK, f"prune.channel_ratio={ratio}"])))
        write_metrics(root / name, {
            "clean_acc": acc, "robust_acc/pgd20": acc / 2, "robust_acc/worst": acc / 2, "n_eval/pgd20": 120,
            "params": 3210, "macs": 98765, "sparsity": ratio, "latency_ms": 1.25, "seed": 0, "ece": math.nan,
            "choices": {"prune": "l1_filter"}, "checks": {"passed": True, "failed": [], "zero_grad": 0.0}})
    return root, snapshot(root), load_runs(root)


@FAST
@example(fault=("metrics.json", ("flip", 0.4375, 1)))  # found by --fuzz-long: a flip inside the recorded config
# digest blamed config.yaml; the digest is now part of what metrics.json's own sha256 covers
@given(st.one_of(st.tuples(st.sampled_from(["metrics.json", "config.yaml"]), BYTE_FAULT),
                 st.tuples(st.just("config.yaml"), st.sampled_from([("missing",), ("foreign",)]))))
def test_a_damaged_finished_run_is_refused_in_one_line_or_read_exactly(finished_runs, fault):
    from robprune.report.table import load_runs

    root, pristine, table = finished_runs
    name, kind = fault
    restore(root, pristine)
    path = root / "a" / name
    if kind[0] == "missing":
        path.unlink()
    elif kind[0] == "foreign":
        shutil.copy(root / "b" / name, path)
    else:
        damage(path, kind)
    try:
        read = load_runs(root)
    except DataError as err:
        one_line(err, "DataError", path)
        event(f"run {name} {kind[0]}: refused")
        return
    extra = [c for c in read.columns if c not in table.columns]  # only a flipped byte in the key "integrity" itself
    assert read[table.columns].equals(table) and all(c.split(".")[0] not in table.columns for c in extra)
    event(f"run {name} {kind[0]}: read, identical")


def test_table_refuses_a_flipped_digit_in_metrics_json_in_one_line(finished_runs, capsys):
    """A digit flipped inside a number still parses as JSON: before the integrity record, a wrong table."""
    from robprune.cli import main

    root, pristine, _ = finished_runs
    restore(root, pristine)
    path = root / "a" / "metrics.json"
    path.write_text(path.read_text().replace('"clean_acc": 0.8125', '"clean_acc": 0.9125'))
    code = main(["table", str(root), "--out", str(root / "tables")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"DataError: {path}: its content does not match its integrity sha256"), err
    restore(root, pristine)


# --- partial state of an unfinished stage: set aside, logged once, rebuilt -----------------------------------------
# Each artifact: files (relative to its folder), write(folder) -> None, read(folder) -> a comparable value,
# or None when nothing is resumed (the stage then rebuilds that part from the start).

def _epoch_write(folder: Path, epochs: int = 1) -> None:
    from tests.test_train import _train

    _train(2, folder, stop_after=epochs)


def _epoch_read(folder: Path):
    from robprune.io import json_digest, tensors_digest
    from robprune.train.loop import load_epoch_checkpoint
    from tests.test_train import _model

    model = _model(seed=5)
    optimizer, generator = torch.optim.Adam(model.parameters(), lr=1e-2), torch.Generator().manual_seed(9)
    state = load_epoch_checkpoint(folder, model, optimizer, generator)
    if state is None:
        return None
    tensors = {**model.state_dict(), "rng": torch.get_rng_state(), "loader": generator.get_state()}
    return state.epoch, json_digest(state.history), tensors_digest(tensors), repr(optimizer.state_dict())


def _autoattack_state(folder: Path, fingerprint: str = "fp"):
    from robprune.attacks.autoattack import _State

    x = torch.linspace(0, 1, 6 * 64).reshape(6, 1, 8, 8)
    clean = torch.tensor([True, True, False, True, True, True])
    return _State.open(folder / "block0.state.json", fingerprint, ["apgd-ce", "square"], clean, x), x


def _autoattack_write(folder: Path, fingerprint: str = "fp") -> None:
    state, x = _autoattack_state(folder, fingerprint)
    state.robust[1] = False
    state.x_adv[1] = 1 - x[1]
    state.finish("apgd-ce", ["a check warning"])


def _autoattack_read(folder: Path):
    from robprune.io import tensors_digest

    state, _ = _autoattack_state(folder)
    if not state.done:
        return None
    return state.done, tensors_digest({"x_adv": state.x_adv, "robust": state.robust, **state.robust_after}), state.warnings


def _flags_write(folder: Path) -> None:
    from robprune.evaluate.adversarial import AttackRun, _save_run

    robust = torch.tensor([True, False, True, True, False])
    _save_run(folder / "block0.safetensors", "tag", AttackRun(robust, 0.0625, {"apgd-ce": robust | True, "square": robust}))


def _flags_read(folder: Path):
    from robprune.evaluate.adversarial import _load_run
    from robprune.io import tensors_digest

    run = _load_run(folder / "block0.safetensors", "tag")
    return None if run is None else (tensors_digest({"robust": run.robust, **run.after}), run.ball_excess)


def _counts_write(folder: Path) -> None:
    from robprune.evaluate.corruption import _save

    _save(folder, "fog", "tag", {"1/0": [37, 64], "3/0": [29, 64], "5/0": [12, 64]})


def _counts_read(folder: Path):
    from robprune.evaluate.corruption import _load

    return _load(folder, "fog", "tag")


PARTIAL = {  # artifact -> (files, write, read, foreign write: the same files from another save)
    "epoch checkpoint": (["last.safetensors", "last.json"], _epoch_write, _epoch_read, functools.partial(_epoch_write, epochs=2)),
    "AutoAttack state": (["block0.state.json", "block0.adv.safetensors"], _autoattack_write, _autoattack_read,
                         functools.partial(_autoattack_write, fingerprint="another call")),
    "attack flags": (["block0.safetensors"], _flags_write, _flags_read, None),
    "corruption counts": (["corruptions/fog.json"], _counts_write, _counts_read, None),
}


@pytest.fixture(scope="module")
def partial_states(tmp_path_factory):
    """Per artifact: its folder, pristine bytes, the value read back from them, and a foreign copy's bytes."""
    out = {}
    for artifact, (files, write, read, foreign) in PARTIAL.items():
        folder = tmp_path_factory.mktemp("faults-partial")
        other = None
        if foreign is not None:
            foreign(folder)
            other = snapshot(folder)
            shutil.rmtree(folder)
            folder.mkdir()
        write(folder)
        out[artifact] = folder, snapshot(folder), read(folder), other
        assert out[artifact][2] is not None
    return out


@settings(FAST, max_examples=1000 if LONG else 100)  # 4 artifacts x their files x 5 kinds of fault, a few ms each
@given(st.sampled_from(sorted(PARTIAL)), st.integers(0, 1),
       st.one_of(BYTE_FAULT, st.just(("missing",)), st.just(("foreign",))))
def test_damaged_partial_state_is_set_aside_and_rebuilt_or_resumed_exactly(partial_states, artifact, which, fault):
    files, _, read, _ = PARTIAL[artifact]
    folder, pristine, value, foreign = partial_states[artifact]
    name = files[which % len(files)]
    restore(folder, pristine)
    path = folder / name
    if fault[0] == "foreign" and foreign is None:
        fault = ("missing",)
    if fault[0] == "missing":
        path.unlink()
    elif fault[0] == "foreign":
        path.write_bytes(foreign[Path(name)])
    else:
        damage(path, fault)
    with warnings_of("robprune") as warnings:
        got = read(folder)
    if got == value:
        assert not warnings and not list(folder.rglob("*.corrupt-*"))
        event(f"{artifact} {name} {fault[0]}: resumed, identical")
        return
    assert got is None, (artifact, fault)  # never a different value: nothing is resumed, the stage redoes it
    if fault[0] in ("truncate", "flip"):
        assert not path.exists() and list(folder.rglob(f"{path.name}.corrupt-*")), "the damaged file is set aside"
        assert len(warnings) == 1 and "damaged" in warnings[0].getMessage() and "moved to" in warnings[0].getMessage()
        event(f"{artifact} {name} {fault[0]}: moved aside, rebuilt")
    else:
        event(f"{artifact} {name} {fault[0]}: rebuilt")


# --- text-attack results saved per example (the resume state of a text evaluation) ---------------------------------

@pytest.fixture(scope="module")
def text_results(tmp_path_factory):
    """A results file of five finished examples (non-ASCII text included), its bytes, the texts and labels."""
    from robprune.attacks.text import TextAttackResult
    from robprune.evaluate.text import ResultStore

    folder = tmp_path_factory.mktemp("faults-text")
    texts = ["a fine film", "naïve but warm — «sweet»", "dull and long", "the cast shines", "weak plot"]
    labels = torch.tensor([1, 1, 0, 1, 0])
    store = ResultStore(folder / "textfooler.jsonl", "tag")
    results = {}
    for i, (text, label) in enumerate(zip(texts, labels.tolist())):
        status = ("succeeded", "failed", "skipped")[i % 3]
        results[i] = TextAttackResult(text, text.replace("a", "ä") if status == "succeeded" else text, label, label,
                                      1 - label if status == "succeeded" else label, status, 7 * i + 1,
                                      0.25 if status == "succeeded" else 0.0, len(text.split()))
        store.append(i, results[i])
    return folder, snapshot(folder), texts, labels, results


@FAST
@given(BYTE_FAULT)
def test_damaged_text_attack_results_are_set_aside_and_reattacked(text_results, fault):
    from robprune.evaluate.text import ResultStore

    folder, pristine, texts, labels, results = text_results
    restore(folder, pristine)
    path = folder / "textfooler.jsonl"
    damage(path, fault)
    with warnings_of("robprune") as warnings:
        kept = ResultStore(path, "tag").load(texts, labels, set(results))
    assert all(kept[i] == results[i] for i in kept)  # what is kept is exactly what was saved; the rest is attacked again
    aside = list(folder.glob("textfooler.jsonl.corrupt-*"))
    assert len(warnings) == len(aside) <= 1
    last_newline = int(fault[1] * len(pristine[Path("textfooler.jsonl")])) == len(pristine[Path("textfooler.jsonl")]) - 1
    assert fault[0] == "truncate" or len(kept) == len(results) or aside or last_newline  # a lost tail is a torn write
    outcome = "all resumed" if len(kept) == len(results) else f"{len(results) - len(kept)} re-attacked"
    event(f"text results {fault[0]}: {outcome}{', moved aside' if aside else ''}")
    with warnings_of("robprune") as again:
        assert ResultStore(path, "tag").load(texts, labels, set(results)) == kept and not again  # rewritten clean
