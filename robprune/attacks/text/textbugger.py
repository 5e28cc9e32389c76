"""TextBugger, black-box (Li, Ji, Du, Li & Wang 2019, "TextBugger: Generating Adversarial Text Against
Real-world Applications", NDSS; §3, the black-box attack), offline.

Words ranked by the drop of the true-class score when deleted (the black-box word importance, one
batched call); for each non-stop word in that order the five bugs of §3 (bug generation): insert a
space into the word, delete a middle character, swap two adjacent middle characters, Sub-C (a
visually similar character: o→0, l→1, a→@ …, or a keyboard-adjacent one: m→n), Sub-W (its
``word_candidates`` nearest neighbours in GloVe, as the paper uses). Character positions are drawn
from ``random.Random(seed)``. Candidates whose sentence-encoder similarity to the original text is
below ``min_similarity`` (the paper's cosine ε = 0.8) are dropped; of the rest, one victim call, and
the bug lowering the true-class probability most is kept (the paper's SelectBug), until the
prediction flips.

Differences, stated: sentences are not ranked first (the black-box attack's first step matters for
documents; SST-2 items are single sentences); USE multilingual v3 instead of USE v3 (``encoder: use``;
robprune.attacks.text.encoder); Sub-C draws one visual and one keyboard substitute per word (TextAttack's recipe draws
homoglyphs only).
"""
from __future__ import annotations

from typing import Annotated

import random

from robprune.attacks.text import base
from robprune.attacks.text.antonyms import WORDNET, drop_antonyms
from robprune.attacks.text.base import AttackState, TextAttackResult, change_limit
from robprune.attacks.text.encoder import USE
from robprune.attacks.text.search import greedy_swap, rank_words, whole_text_similarity
from robprune.attacks.text.vectors import GLOVE, load_vectors
from robprune.attacks.text.words import is_stop_word, match_case
from robprune.registry import ATTACKS

# Sub-C: visually similar characters (the paper's examples o→0, l→1, a→@, and the same idea for others)
VISUAL = {"o": "0", "0": "o", "l": "1", "1": "l", "i": "1", "a": "@", "e": "3", "s": "$", "t": "7", "b": "6",
          "g": "9", "z": "2"}
_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
# Sub-C: keys next to each letter on a QWERTY keyboard (same row neighbours, and the keys above and below)
KEYBOARD = {c: "".join(sorted({row[j] for row in _ROWS[max(0, r - 1):r + 2] for j in (i - 1, i, i + 1)
                                if 0 <= j < len(row)} - {c}))
            for r, keys in enumerate(_ROWS) for i, c in enumerate(keys)}

def check_params(*, where: str = "attack.textbugger", **params) -> None:
    """ConfigError naming ``<where>.<key>`` for an unknown or invalid parameter of :func:`textbugger`."""
    base.check_with(PARAMS, where, params)


@ATTACKS.register("textbugger", modality="text")
def textbugger(victim, text: str, label: int, *, seed: int = 0,
               word_candidates: Annotated[int | None, base.positive_int(null=True, example=5), "Sub-W: nearest "
                                          "neighbours per word in the word vectors (paper: top 5 in GloVe); null = no "
                                          "word bug"] = 5,
               min_cos: Annotated[float | None, base.between(-1, 1, null=True), "least cosine of a Sub-W candidate; "
                                  "null = none (the paper sets none)"] = None,
               min_similarity: base.MinSimilarity = 0.8, similarity_metric: base.SimilarityMetric = "cosine",
               max_words_changed: base.MaxWordsChanged = None, query_budget: base.QueryBudget = None,
               vectors: base.Vectors = GLOVE, vocab_size: base.VocabSize = None,
               counter_fitting: base.CounterFittingOptions = base.COUNTER_FITTING, encoder: base.Encoder = USE,
               antonyms: base.Antonyms = WORDNET) -> TextAttackResult:
    """Attack ``text`` (true class ``label``) against ``victim``; deterministic for a given ``seed``.

    word_candidates: Sub-W neighbours per word (None or vectors None: no word bug); min_cos: their
    cosine bound (None: none); min_similarity: encoder similarity of the whole text to the original
    in the units of ``similarity_metric`` (None or encoder None: no check); max_words_changed,
    query_budget, vectors, vocab_size, encoder, antonyms (Sub-W neighbours that are WordNet antonyms are
    dropped): as for :func:`~robprune.attacks.text.textfooler`.
    """
    check_params(**{k: v for k, v in locals().items() if k in PARAMS})
    state = AttackState(victim, text, label, query_budget)
    if state.pred_before != state.label:
        return state.result()
    words = state.original.words
    slots = [i for i in state.original.attackable() if not is_stop_word(words[i])]
    rng = random.Random(seed)
    bugs = {i: character_bugs(words[i], rng) for i in slots}
    if vectors is not None and word_candidates:
        found = load_vectors(vectors, vocab_size, counter_fitting).neighbours_many([words[i] for i in slots], word_candidates, min_cos,
                                                                 alphabetic=True)
        word_bugs = drop_antonyms(antonyms, {i: [match_case(w, words[i]) for w, _ in nbrs] for i, nbrs in zip(slots, found)},
                                  words)
        for i, candidates in word_bugs.items():
            bugs[i] += candidates
    order = rank_words(state, [i for i in slots if bugs[i]])
    if order is None:
        return state.result()
    similarity = whole_text_similarity(encoder, min_similarity, similarity_metric, victim.device)
    greedy_swap(state, order, lambda i: bugs[i], similarity=similarity,
                limit=change_limit(max_words_changed, state.n_words), most_similar_flip=False)
    return state.result()


def character_bugs(word: str, rng: random.Random) -> list[str]:
    """Insert, Delete, Swap, Sub-C (visual) and Sub-C (keyboard) bugs of ``word``, one each where the word
    allows it (the first and last characters stay, as in the paper), positions drawn from rng."""
    n, out = len(word), []
    if n >= 2:
        p = rng.randrange(1, n)
        out.append(word[:p] + " " + word[p:])
    if n >= 3:
        p = rng.randrange(1, n - 1)
        out.append(word[:p] + word[p + 1:])
    if n >= 4:
        p = rng.randrange(1, n - 2)
        out.append(word[:p] + word[p + 1] + word[p] + word[p + 2:])
    visual = [p for p, c in enumerate(word) if c.lower() in VISUAL]
    if visual:
        p = rng.choice(visual)
        out.append(word[:p] + VISUAL[word[p].lower()] + word[p + 1:])
    keyboard = [p for p, c in enumerate(word) if c.lower() in KEYBOARD]
    if keyboard:
        p = rng.choice(keyboard)
        out.append(word[:p] + rng.choice(KEYBOARD[word[p].lower()]) + word[p + 1:])
    return [b for b in dict.fromkeys(out) if b != word]


textbugger.check_params = check_params
PARAMS = base.params_of(textbugger)  # {option: check}: its declaration's
