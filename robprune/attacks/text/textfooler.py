"""TextFooler (Jin, Jin, Zhou & Szolovits 2020, "Is BERT Really Robust?", AAAI; Algorithm 1), offline.

Following Algorithm 1 and TextAttack's ``textfooler`` recipe: words ranked by the drop of the
true-class probability when deleted (step 1, word importance ranking); stop words filtered out; for
each remaining word in that order, its ``max_candidates`` nearest neighbours in a word-vector table
with cosine >= ``min_cos``, letters only (step 2, synonym extraction); sentence-encoder similarity of
the ±``window``/2-word windows around the word, against the text before this step, >= ``min_similarity``
(angular, TextAttack's 0.840845 = 1 - 0.5/π; texts shorter than the window skip it, as TextAttack
does); of the candidates that flip the prediction the most similar one wins, else the one lowering
the true-class probability most is kept if it lowers it, and the next word follows. Before the encoder,
candidates whose part of speech in context differs from the word's are dropped, nouns and verbs
interchangeable (``pos_match``, TextAttack's ``PartOfSpeech(allow_verb_noun_swap=True)``;
robprune.attacks.text.pos), and the encoder is the Universal Sentence Encoder (``encoder: use``).

Candidates that are WordNet antonyms of the word (``antonyms``, on by default) are dropped, as
counter-fitted vectors keep them apart (robprune.attacks.text.antonyms).

Differences, stated: spaCy's tagger instead of NLTK's (same universal tag classes); USE multilingual
v3 instead of USE v3 (robprune.attacks.text.encoder); the candidates come from GloVe 6B 50-d
counter-fitted here with the paper's constraints and hyperparameters (``counter-fitted-glove-50d``,
robprune.attacks.text.counterfit) instead of the authors' counter-fitted Paragram-SL999 vectors (a file
of those works as ``vectors``).
"""
from __future__ import annotations

from typing import Annotated

from robprune.attacks.text import base
from robprune.attacks.text.antonyms import WORDNET, drop_antonyms
from robprune.attacks.text.base import AttackState, TextAttackResult, change_limit
from robprune.attacks.text.encoder import USE, load_encoder
from robprune.attacks.text.pos import load_tagger
from robprune.attacks.text.search import Similarity, greedy_swap, rank_words
from robprune.attacks.text.vectors import COUNTER_FITTED, GLOVE, load_vectors
from robprune.attacks.text.words import is_stop_word, match_case
from robprune.errors import ConfigError
from robprune.registry import ATTACKS

def check_params(*, where: str = "attack.textfooler", **params) -> None:
    """ConfigError naming ``<where>.<key>`` for an unknown or invalid parameter of :func:`textfooler`."""
    base.check_with(PARAMS, where, params)
    if params.get("vectors", COUNTER_FITTED) is None:
        raise ConfigError(f"{where}.vectors must name word vectors ({COUNTER_FITTED}, {GLOVE} or a file); TextFooler's "
                          "candidates come from them")


@ATTACKS.register("textfooler", modality="text")
def textfooler(victim, text: str, label: int, *, seed: int = 0,
               max_candidates: Annotated[int, base.positive_int(), "nearest neighbours tried per word (paper: 50)"] = 50,
               min_cos: Annotated[float, base.between(-1, 1), "least cosine between a word and its candidate in the "
                                  "word vectors (paper: 0.5)"] = 0.5,
               min_similarity: base.MinSimilarity = 0.840845057, similarity_metric: base.SimilarityMetric = "angular",
               window: Annotated[int | None, base.positive_int(null=True, example=15), "words compared around the "
                                 "changed one (paper: 15); null = whole texts"] = 15,
               skip_short: Annotated[bool, base.boolean, "texts with fewer words than window skip the similarity "
                                     "check (TextAttack's recipe)"] = True,
               max_words_changed: base.MaxWordsChanged = None, query_budget: base.QueryBudget = None,
               vectors: base.Vectors = COUNTER_FITTED, vocab_size: base.VocabSize = None,
               counter_fitting: base.CounterFittingOptions = base.COUNTER_FITTING, encoder: base.Encoder = USE,
               antonyms: base.Antonyms = WORDNET, pos_match: base.PosMatch = True) -> TextAttackResult:
    """Attack ``text`` (true class ``label``) against ``victim`` (:class:`~robprune.attacks.text.Victim`).

    max_candidates: neighbours per word; min_cos: their cosine bound in [-1, 1]; min_similarity:
    encoder similarity bound in the units of ``similarity_metric`` (None or encoder None: no check);
    window: words compared around the changed one (None: whole texts); max_words_changed: fraction
    in (0, 1] of the attackable words, None = no limit; query_budget: victim queries incl. the clean
    prediction, None = no budget; vectors: ``counter-fitted-glove-50d``, ``glove-6b-50d`` or a text-format
    file (first vocab_size words); encoder: ``use``, ``minilm`` or a local folder; antonyms: ``wordnet``, a
    WordNet database folder, or None (keep antonym candidates); pos_match: drop candidates whose tag in
    context cannot replace the word's (robprune.attacks.text.pos). Deterministic: seed is accepted for the common
    signature and unused (nothing is drawn at random).
    """
    check_params(**{k: v for k, v in locals().items() if k in PARAMS})
    state = AttackState(victim, text, label, query_budget)
    if state.pred_before != state.label:
        return state.result()
    slots = [i for i in state.original.attackable() if not is_stop_word(state.original.words[i])]
    table = load_vectors(vectors, vocab_size, counter_fitting)
    found = table.neighbours_many([state.original.words[i] for i in slots], max_candidates, min_cos, alphabetic=True)
    neighbours = {i: [match_case(w, state.original.words[i]) for w, _ in nbrs] for i, nbrs in zip(slots, found) if nbrs}
    neighbours = drop_antonyms(antonyms, neighbours, state.original.words)
    order = rank_words(state, list(neighbours))
    if order is None:
        return state.result()
    similarity = None
    if encoder is not None and min_similarity is not None:
        similarity = Similarity(load_encoder(encoder, victim.device), float(min_similarity), similarity_metric,
                                window, against="current", skip_short=skip_short)
    candidates = neighbours.__getitem__
    if pos_match:  # tagged lazily, slot by slot, as the search reaches it (a success ends it early)
        tagger, words = load_tagger(), state.original.words
        candidates = lambda i: tagger.keep(words, i, neighbours[i])  # noqa: E731
    greedy_swap(state, order, candidates, similarity=similarity,
                limit=change_limit(max_words_changed, state.n_words), most_similar_flip=True)
    return state.result()


textfooler.check_params = check_params
PARAMS = base.params_of(textfooler)  # {option: check}: its declaration's
