"""Counter-fitting (robprune.attacks.text.counterfit) on small real subsets: GloVe 6B 50-d rows of the
packaged constraints' commonest words, the packaged PPDB and WordNet pairs among them."""
from __future__ import annotations

import inspect
import json
import shutil

import numpy as np
import pytest
from omegaconf import OmegaConf

from robprune.attacks.text import textfooler
from robprune.attacks.text.counterfit import (ANTONYMS, CACHE_STAGE, CONSTRAINTS, COUNTER_FITTED, SYNONYMS, VOCABULARY,
                                              CounterFitting, close_pairs, counter_fit, counter_fitted, normalise,
                                              pair_rows, read_constraints, restrict)
from robprune.attacks.text.vectors import GLOVE, load_vectors
from robprune.errors import ConfigError, DataError
from robprune.store import StageCache, write_manifest

N_WORDS = 1500  # the commonest words of the vocabulary: a few hundred synonym and antonym pairs among them


@pytest.fixture(scope="module")
def packaged():
    return read_constraints()


@pytest.fixture(scope="module")
def small(packaged):
    """(words, (N, 50) GloVe rows, synonym rows, antonym rows) for the N commonest vocabulary words."""
    glove = load_vectors(GLOVE, 20000)
    words, table = restrict(glove.words, glove.matrix.numpy(), packaged.vocabulary)
    words, table = words[:N_WORDS], table[:N_WORDS]
    return words, table, pair_rows(words, packaged.synonyms), pair_rows(words, packaged.antonyms)


def _cos(unit: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", unit[pairs[:, 0]], unit[pairs[:, 1]])


def test_synonyms_move_closer_antonyms_apart_and_the_rest_keeps_its_shape(small):
    _, table, synonyms, antonyms = small
    assert len(synonyms) > 200 and len(antonyms) > 100  # both orders of each pair
    before = normalise(table)
    fitted, stats = counter_fit(table, synonyms, antonyms)
    assert fitted.shape == table.shape and fitted.dtype == np.float32
    assert np.allclose(np.linalg.norm(fitted, axis=1), 1.0, atol=1e-5)
    syn_before, syn_after = _cos(before, synonyms), _cos(fitted, synonyms)
    ant_before, ant_after = _cos(before, antonyms), _cos(fitted, antonyms)
    assert syn_after.mean() > syn_before.mean() + 0.15 and (syn_after > syn_before).mean() > 0.95  # 0.78 -> 0.96
    assert ant_after.mean() < ant_before.mean() - 0.3 and (ant_after < ant_before).mean() > 0.95   # 0.72 -> 0.26
    assert stats["synonym_pairs"] * 2 == len(synonyms) and stats["vsp_pairs"] > 1000
    # VSP: the pairs within rho = 0.2 of each other; its hinge (how much further apart they end) is what it
    # minimises, so it is far smaller with the term (k3 = 0.1) than without (k3 = 0), and so is their drift
    vsp, original = close_pairs(before, 0.2)
    without, _ = counter_fit(table, synonyms, antonyms, CounterFitting(k3=0.0))
    hinge = lambda unit: np.maximum(0.0, 1.0 - _cos(unit, vsp) - original).mean()  # noqa: E731
    drift = lambda unit: np.abs(_cos(unit, vsp) - _cos(before, vsp)).mean()  # noqa: E731
    assert hinge(before) < 1e-6 and hinge(fitted) < 0.1 * hinge(without)  # 0.002 vs 0.127
    assert drift(fitted) < 0.5 * drift(without)                            # 0.045 vs 0.129


def test_close_pairs_finds_exactly_the_pairs_within_rho(small):
    unit = normalise(small[1][:700])
    pairs, dist = close_pairs(unit, 0.3)
    cos = unit @ unit.T
    np.fill_diagonal(cos, -1)
    want = np.argwhere(cos >= np.float32(0.7))
    assert np.array_equal(pairs, want) and np.allclose(dist, 1 - cos[want[:, 0], want[:, 1]], atol=1e-6)


def _small_constraints(folder, words, packaged, extra_synonym=None):
    """A constraints folder holding the vocabulary ``words`` and the packaged pairs among them."""
    folder.mkdir(parents=True, exist_ok=True)
    known = set(words)
    (folder / VOCABULARY).write_text("\n".join(words) + "\n")
    for names, pairs in ((SYNONYMS, packaged.synonyms), (ANTONYMS, packaged.antonyms)):
        kept = [f"{a} {b}" for a, b in pairs if a in known and b in known]
        for name in names:
            (folder / name).write_text("\n".join(kept) + "\n")
    if extra_synonym:
        with open(folder / SYNONYMS[0], "a") as fh:
            fh.write(" ".join(extra_synonym) + "\n")
    return folder


def test_the_table_is_cached_keyed_by_its_inputs_and_a_damaged_entry_is_rebuilt(small, packaged, tmp_path):
    words, table, _, _ = small
    words, table = words[:300], table[:300]
    folder = _small_constraints(tmp_path / "constraints", words, packaged)
    root, cache = tmp_path / "cache", StageCache(tmp_path / "cache", enabled=True, scratch=tmp_path / "cache")
    first_words, first = counter_fitted(words, table, constraints=read_constraints(folder), root=root)
    (entry,) = [p for p in (root / CACHE_STAGE).iterdir() if p.is_dir()]
    assert first_words == words and cache.state(CACHE_STAGE, entry.name) == "cached"
    built = (entry / "vectors.safetensors").stat().st_mtime_ns
    again_words, again = counter_fitted(words, table, constraints=read_constraints(folder), root=root)
    assert again_words == words and np.array_equal(again, first)
    assert (entry / "vectors.safetensors").stat().st_mtime_ns == built  # read back, not rebuilt
    assert json.loads((entry / "stage.json").read_text())["options"] == CounterFitting().__dict__
    # a constraint file that changes gives another key, so another entry
    _small_constraints(folder, words, packaged, extra_synonym=(words[10], words[11]))
    counter_fitted(words, table, constraints=read_constraints(folder), root=root)
    assert len([p for p in (root / CACHE_STAGE).iterdir() if p.is_dir()]) == 2
    # so do other hyperparameters
    counter_fitted(words, table, constraints=read_constraints(folder), options=CounterFitting(k1=0.2), root=root)
    assert len([p for p in (root / CACHE_STAGE).iterdir() if p.is_dir()]) == 3
    # damaged bytes fail the manifest: the entry is moved aside and built again, to the same floats
    data = bytearray((entry / "vectors.safetensors").read_bytes())
    data[-8:] = b"\xff" * 8
    (entry / "vectors.safetensors").write_bytes(bytes(data))
    _small_constraints(folder, words, packaged)  # the first entry's constraints again
    rebuilt_words, rebuilt = counter_fitted(words, table, constraints=read_constraints(folder), root=root)
    assert np.array_equal(rebuilt, first) and list((root / CACHE_STAGE).glob(f"{entry.name}.corrupt-*"))


def test_an_entry_that_reads_back_malformed_is_one_line(small, packaged, tmp_path):
    words, table = small[0][:200], small[1][:200]
    folder = _small_constraints(tmp_path / "constraints", words, packaged)
    counter_fitted(words, table, constraints=read_constraints(folder), root=tmp_path)
    (entry,) = [p for p in (tmp_path / CACHE_STAGE).iterdir() if p.is_dir()]
    (entry / "words.json").write_text(json.dumps(words[:-1]))  # one word short, and the manifest agrees
    write_manifest(entry)
    with pytest.raises(DataError, match="delete that folder") as err:
        counter_fitted(words, table, constraints=read_constraints(folder), root=tmp_path)
    assert str(entry) in str(err.value) and "\n" not in str(err.value)


def test_bad_constraint_files_and_options_are_one_line_errors(tmp_path):
    folder = tmp_path / "constraints"
    shutil.copytree(CONSTRAINTS, folder)
    (folder / "wordnet_antonyms.txt").unlink()
    with pytest.raises(ConfigError, match="has no wordnet_antonyms.txt") as err:
        read_constraints(folder)
    assert "\n" not in str(err.value)
    (folder / "wordnet_antonyms.txt").write_text("good bad\nhot cold warm\n")
    with pytest.raises(DataError, match=r"wordnet_antonyms.txt:2: expected two words"):
        read_constraints(folder)
    for key, value, message in [("rho", 0.9, r"counter_fitting.rho must be in \[0, 0.5\], got 0.9"),
                                ("k1", -0.1, "counter_fitting.k1 must be >= 0"), ("delta", 3, "counter_fitting.delta"),
                                ("steps", 0, "counter_fitting.steps"), ("gamma", "x", "counter_fitting.gamma must be a number")]:
        with pytest.raises(ConfigError, match=message) as err:
            CounterFitting(**{key: value})
        assert "\n" not in str(err.value)


def test_textfooler_defaults_to_the_counter_fitted_table_and_its_digest_enters_the_eval_key():
    from robprune.evaluate.text import input_stats

    assert inspect.signature(textfooler).parameters["vectors"].default == COUNTER_FITTED
    node = lambda vectors: OmegaConf.create({"attacks": {"textfooler": {  # noqa: E731
        "_target_": "robprune.attacks.text.textfooler", "vectors": vectors}}})
    assert input_stats(node(COUNTER_FITTED)) == [[COUNTER_FITTED, read_constraints().digest]]
    assert input_stats(node(GLOVE)) == []
    with pytest.raises(ConfigError, match=COUNTER_FITTED):
        load_vectors("no-such-vectors.txt")


def test_the_hyperparameters_are_attack_options_checked_before_work_and_recorded():
    """counter_fitting is a declared option of the attacks that take vectors: a value out of range is one
    line naming the key (load_vectors raises it before reading any table), and metrics.json's
    text_constraints record the set the run used (all seven, the paper's where the config sets none)."""
    import functools
    from dataclasses import asdict

    from robprune.attacks.text import textbugger
    from robprune.evaluate.text import effective_constraints

    for attack in (textfooler, textbugger):
        assert inspect.signature(attack).parameters["counter_fitting"].default == asdict(CounterFitting())
        with pytest.raises(ConfigError, match=r"eval.attacks.x.counter_fitting.steps must be in \[1, 1000\]") as err:
            attack.check_params(where="eval.attacks.x", counter_fitting={"steps": 0})
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"eval.attacks.x.counter_fitting must be a group of keys, got 0.3"):
        textfooler.check_params(where="eval.attacks.x", counter_fitting=0.3)  # a value where the group goes
    with pytest.raises(ConfigError, match=r"eval.attacks.x.counter_fitting.rh is not a key .*did you mean .*rho"):
        textfooler.check_params(where="eval.attacks.x", counter_fitting={"rh": 0.3})
    with pytest.raises(ConfigError, match="counter_fitting.delta must be in"):
        load_vectors(COUNTER_FITTED, counter_fitting={"delta": 2.5})
    recorded = effective_constraints(functools.partial(textfooler, counter_fitting={"rho": 0.3}))["counter_fitting"]
    assert recorded == {**asdict(CounterFitting()), "rho": 0.3}
    assert effective_constraints(functools.partial(textfooler, vectors=GLOVE))["counter_fitting"] is None
    assert effective_constraints(textbugger)["counter_fitting"] is None  # GloVe by default: nothing to record


def test_a_cache_folder_that_cannot_be_written_still_gives_the_table(small, packaged, tmp_path):
    words, table = small[0][:200], small[1][:200]
    folder = _small_constraints(tmp_path / "constraints", words, packaged)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would go")
    got_words, got = counter_fitted(words, table, constraints=read_constraints(folder), root=blocked)
    fitted, _ = counter_fit(table, pair_rows(words, read_constraints(folder).synonyms),
                            pair_rows(words, read_constraints(folder).antonyms))
    assert got_words == words and np.array_equal(got, fitted)
