"""Greedy word substitution in order of word importance, the search of TextFooler (Jin et al. 2020,
Algorithm 1), TextBugger's black-box attack (Li et al. 2019, §3) and BERT-Attack (Li et al. 2020, §3),
as TextAttack's ``GreedyWordSwapWIR`` implements them.

Per word slot, in decreasing importance: build every candidate text at once, drop those the sentence
encoder finds too far from the reference text (the constraint runs before the model, as in TextAttack,
so rejected candidates cost no query), query the victim once for all that remain, and

- if some candidates flip the prediction: take one of them (the most similar, or the one with the
  lowest true-class probability) and stop: success;
- else keep the candidate with the lowest true-class probability if it lowers it, and go on.

Each slot is changed at most once; the search stops when a batch would exceed the query budget or
the change limit is reached.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from robprune.attacks.text.base import AttackState
from robprune.attacks.text.encoder import Encoder, angular


@dataclass(frozen=True)
class Similarity:
    """The sentence-encoder constraint. threshold: in the metric's units (angular in [0, 1]: 1 - arccos(cos)/π;
    cosine in [-1, 1]); window: words around the changed one compared (None: whole texts); against:
    'current' (the text before this step, TextFooler) or 'original'; skip_short: texts with fewer words
    than the window pass unchecked (TextAttack's TextFooler recipe)."""

    encoder: Encoder
    threshold: float
    metric: str = "angular"
    window: int | None = None
    against: str = "original"
    skip_short: bool = False

    def scores(self, state: AttackState, index: int, words: list[str]) -> torch.Tensor:
        """(m,) similarity of the text with slot ``index`` = words[j] to the reference text."""
        reference = state.current if self.against == "current" else state.original
        if self.window is not None and self.skip_short and len(state.current.words) < self.window:
            return torch.ones(len(words))
        candidates = [state.current.replace(index, w) for w in words]
        if self.window is None:
            a, b = [reference.text] * len(words), [c.text for c in candidates]
        else:
            a, b = [reference.window(index, self.window)] * len(words), [c.window(index, self.window) for c in candidates]
        cos = self.encoder.similarity(a, b)
        return angular(cos) if self.metric == "angular" else cos


def whole_text_similarity(encoder: str | None, min_similarity: float | None, metric: str, device) -> Similarity | None:
    """The constraint of TextBugger and BERT-Attack: encoder similarity of the whole text to the original
    >= min_similarity; None when either is null (no check)."""
    if encoder is None or min_similarity is None:
        return None
    from robprune.attacks.text.encoder import load_encoder

    return Similarity(load_encoder(encoder, device), float(min_similarity), metric, window=None, against="original")


def rank_words(state: AttackState, slots: list[int], replacement: str = "") -> list[int] | None:
    """slots ordered by importance: the drop of the true-class probability when the word is replaced by
    ``replacement`` ("" deletes it: TextFooler, TextBugger black-box; "[UNK]": BERT-Attack). One victim
    call for all slots; None when it does not fit in the budget. Ties keep slot order."""
    if not slots:
        return []
    probs = state.query([state.current.text_with(i, replacement) for i in slots])
    if probs is None:
        return None
    drop = state.p_true - probs[:, state.label]
    order = sorted(range(len(slots)), key=lambda j: (-float(drop[j]), slots[j]))
    return [slots[j] for j in order]


def greedy_swap(state: AttackState, order: list[int], candidates: Callable[[int], list[str]], *,
                similarity: Similarity | None, limit: int | None, most_similar_flip: bool) -> None:
    """Run the greedy search on ``state`` (updated in place). candidates(slot) -> replacement words for
    that slot (may be empty). most_similar_flip: among flipping candidates take the most similar one
    (TextFooler), else the one with the lowest true-class probability (TextBugger)."""
    for index in order:
        if not state.can_change(limit):
            return
        words = [w for w in dict.fromkeys(candidates(index)) if w != state.current.words[index]]
        sims = similarity.scores(state, index, words) if similarity is not None and words else None
        if sims is not None:
            keep = (sims >= similarity.threshold).nonzero().squeeze(1).tolist()
            words, sims = [words[j] for j in keep], sims[keep]
        if not words:
            continue
        probs = state.query([state.current.text_with(index, w) for w in words])
        if probs is None:
            return
        if _step(state, index, words, probs, sims, most_similar_flip):
            return


def _step(state: AttackState, index: int, words: list[str], probs: torch.Tensor, sims: torch.Tensor | None,
          most_similar_flip: bool) -> bool:
    """Accept the best candidate of one slot; True when it flips the prediction."""
    p_true = probs[:, state.label]
    flips = (probs.argmax(1) != state.label).nonzero().squeeze(1)
    if flips.numel():
        if most_similar_flip and sims is not None:
            best = int(flips[torch.argmax(sims[flips])])  # the first of equally similar ones
        else:
            best = int(flips[torch.argmin(p_true[flips])])
        state.accept(index, words[best], probs[best])
        return True
    best = int(torch.argmin(p_true))
    if float(p_true[best]) < state.p_true:
        state.accept(index, words[best], probs[best])
    return False
