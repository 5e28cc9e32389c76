"""BERT-Attack (Li, Ma, Guo, Xue & Qiu 2020, "BERT-ATTACK: Adversarial Attack Against BERT Using BERT",
EMNLP; §3), offline, with a masked language model the user supplies.

Words ranked by the drop of the true-class probability when replaced by the victim tokenizer's unknown
token (§3.1, Eq. 1 with [UNK] as TextAttack's recipe uses); the original, unmasked sentence goes once
through the masked LM, and each word's candidates are its top ``max_candidates`` predictions at its
position (§3.2): for a word of several sub-words the combinations of the per-position top
predictions ranked by perplexity (the mean sub-word cross-entropy), joined. At most
``max_words_changed`` (40%) of the words change; candidates need Universal Sentence Encoder cosine
>= 0.2 to the original text (``encoder: use``, USE multilingual v3; TextAttack's fixed threshold, the
authors filtered afterwards); of the candidates that flip the prediction the most similar wins, as in
TextAttack's greedy search.

The masked LM is a local folder (or a hub name already in the local Hugging Face cache) with a fast
tokenizer; there is no default, since none ships offline: without one the attack is a ConfigError.
"""
from __future__ import annotations

from typing import Annotated

import functools
import math
import os

import torch

from robprune.attacks.text import base
from robprune.attacks.text.antonyms import WORDNET, drop_antonyms
from robprune.attacks.text.base import AttackState, TextAttackResult, change_limit
from robprune.attacks.text.encoder import USE, quiet_loading
from robprune.attacks.text.search import greedy_swap, rank_words, whole_text_similarity
from robprune.attacks.text.words import Sentence, is_stop_word, match_case
from robprune.errors import ConfigError
from robprune.options import REQUIRED
from robprune.registry import ATTACKS

MAX_COMBINATIONS = 4096  # sub-word combinations scored per multi-token word (top m per position, m^n <= this)

def check_params(*, where: str = "attack.bert_attack", **params) -> None:
    """ConfigError naming ``<where>.<key>`` for an unknown or invalid parameter, or no masked LM."""
    base.check_with(PARAMS, where, params)
    if params.get("mlm") is None:
        raise ConfigError(f"{where}.mlm is not set: BERT-Attack needs a masked language model; set it to a local "
                          f"folder saved with save_pretrained (e.g. {where}.mlm=path/to/bert-base-uncased)")


@ATTACKS.register("bert_attack", modality="text")
def bert_attack(victim, text: str, label: int, *, seed: int = 0,
                mlm: Annotated[str | None, base.text_or_null, REQUIRED, "masked language model: a local folder saved "
                               "with save_pretrained (e.g. bert-base-uncased); required, none ships offline"] = None,
                max_candidates: Annotated[int, base.positive_int(example=48), "K masked-LM predictions per word "
                                          "(paper, via TextAttack: 48)"] = 48,
                max_subwords: Annotated[int, base.positive_int(example=4), "words split into more sub-word tokens get "
                                        "no candidates"] = 4,
                max_words_changed: base.MaxWordsChanged = 0.4, min_similarity: base.MinSimilarity = 0.2,
                similarity_metric: base.SimilarityMetric = "cosine", query_budget: base.QueryBudget = None,
                encoder: base.Encoder = USE, antonyms: base.Antonyms = WORDNET) -> TextAttackResult:
    """Attack ``text`` (true class ``label``) against ``victim``. mlm: masked-LM folder (required);
    max_candidates: K predictions per word; max_subwords: longer words get no candidates; antonyms:
    masked-LM candidates that are WordNet antonyms are dropped (a masked LM readily proposes "bad"
    for "good"; the paper filters with the encoder only); the rest as
    for :func:`~robprune.attacks.text.textfooler`. Deterministic (seed unused)."""
    check_params(**{k: v for k, v in locals().items() if k in PARAMS})
    state = AttackState(victim, text, label, query_budget)
    if state.pred_before != state.label:
        return state.result()
    lm = load_mlm(mlm, str(victim.device))
    slots = [i for i in state.original.attackable() if not is_stop_word(state.original.words[i])]
    found = drop_antonyms(antonyms, mlm_candidates(lm, state.original, slots, max_candidates, max_subwords),
                          state.original.words)
    unk = getattr(victim.tokenizer, "unk_token", None) or "[UNK]"
    order = rank_words(state, [i for i in slots if found.get(i)], unk)
    if order is None:
        return state.result()
    similarity = whole_text_similarity(encoder, min_similarity, similarity_metric, victim.device)
    greedy_swap(state, order, lambda i: found[i], similarity=similarity,
                limit=change_limit(max_words_changed, state.n_words), most_similar_flip=True)
    return state.result()


@functools.lru_cache(maxsize=1)
def load_mlm(name: str, device: str):
    """(tokenizer, AutoModelForMaskedLM in eval mode) from a local folder or the local hub cache."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    source = os.path.expanduser(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        with quiet_loading():
            model = AutoModelForMaskedLM.from_pretrained(source, use_safetensors=True).to(device).eval()
    except (OSError, ValueError) as err:
        raise ConfigError(f"bert_attack.mlm={name!r} cannot be loaded offline ({str(err).splitlines()[0]}); "
                          f"give a local folder holding a masked language model") from None
    if not tokenizer.is_fast:
        raise ConfigError(f"bert_attack.mlm={name!r}: its tokenizer is not a fast one (needed for word offsets)")
    return tokenizer, model


@torch.inference_mode()
def mlm_candidates(lm, sentence: Sentence, slots: list[int], k: int, max_subwords: int) -> dict[int, list[str]]:
    """slot -> up to k alphabetic replacement words predicted by the masked LM on the unmasked sentence."""
    tokenizer, model = lm
    enc = tokenizer(sentence.text, return_offsets_mapping=True, truncation=True, return_tensors="pt")
    offsets = enc.pop("offset_mapping")[0].tolist()
    log_probs = model(**enc.to(model.device)).logits[0].float().log_softmax(-1).cpu()  # (L, V)
    spans, out = sentence.spans(), {}
    for i in slots:
        start, end = spans[i]
        positions = [p for p, (a, b) in enumerate(offsets) if start <= a < b <= end]
        if 0 < len(positions) <= max_subwords:
            words = _combine(tokenizer, log_probs[positions], k)
            original = sentence.words[i].lower()
            out[i] = [match_case(w, sentence.words[i]) for w in words if w.isalpha() and w != original][:k]
    return out


def _combine(tokenizer, log_probs: torch.Tensor, k: int) -> list[str]:
    """Best sub-word sequences for n positions (log_probs: (n, V)), by mean log-probability (= lowest
    perplexity, BERT-Attack §3.2), as joined words; a continuation's '##' is dropped."""
    n = log_probs.shape[0]
    m = max(1, min(k, math.floor(MAX_COMBINATIONS ** (1.0 / n))))
    top_lp, top_ids = log_probs.topk(k if n == 1 else m, dim=1)  # (n, m)
    total, ids = top_lp[0], top_ids[0][:, None]
    for pos in range(1, n):
        total = (total[:, None] + top_lp[pos][None, :]).reshape(-1)
        ids = torch.cat([ids.repeat_interleave(m, 0), top_ids[pos].repeat(ids.shape[0])[:, None]], dim=1)
    order = total.argsort(descending=True, stable=True)
    words: list[str] = []
    for row in order.tolist():
        tokens = tokenizer.convert_ids_to_tokens(ids[row].tolist())
        if n == 1 and tokens[0].startswith("##"):
            continue
        words.append("".join(t.removeprefix("##") for t in tokens))
        if len(words) >= 4 * k:
            break
    return list(dict.fromkeys(words))


bert_attack.check_params = check_params
PARAMS = base.params_of(bert_attack)  # {option: check}: its declaration's
