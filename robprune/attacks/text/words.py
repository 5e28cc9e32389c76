"""Sentences as word slots that rebuild the exact text, and which words an attack may touch.

A word is a run of letters, digits and apostrophes holding at least one letter or digit; everything
else (spaces, punctuation, quote marks made of apostrophes) is kept as separators, so
``Sentence(text).text == text`` for every string. SST-2 is lower-cased and space-tokenised with
punctuation as separate tokens (``it 's a charming , funny film .``), but nothing here assumes it.

Attackable words contain a letter and are not clitics (``'s``, ``'ve``, ``n't``): punctuation and
numbers are never attacked. Each recipe additionally leaves TextFooler's stop words alone.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass

_WORD = re.compile(r"((?:[^\W_]|')*[^\W_](?:[^\W_]|')*)")

# The stop words of TextFooler's public implementation (Jin et al. 2020, github.com/jind11/TextFooler,
# criteria.py), as TextAttack's textfooler recipe embeds them (textattack/attack_recipes/
# textfooler_jin_2019.py). Words in this set are never replaced.
STOP_WORDS = frozenset("""
a about above across after afterwards again against ain all almost alone along already also although am among
amongst an and another any anyhow anyone anything anyway anywhere are aren aren't around as at back been before
beforehand behind being below beside besides between beyond both but by can cannot could couldn couldn't d didn
didn't doesn doesn't don don't down due during either else elsewhere empty enough even ever everyone everything
everywhere except first for former formerly from hadn hadn't hasn hasn't haven haven't he hence her here hereafter
hereby herein hereupon hers herself him himself his how however hundred i if in indeed into is isn isn't it it's
its itself just latter latterly least ll may me meanwhile mightn mightn't mine more moreover most mostly must
mustn mustn't my myself namely needn needn't neither never nevertheless next no nobody none noone nor not nothing
now nowhere o of off on once one only onto or other others otherwise our ours ourselves out over per please s same
shan shan't she she's should've shouldn shouldn't somehow something sometime somewhere such t than that that'll
the their theirs them themselves then thence there thereafter thereby therefore therein thereupon these they this
those through throughout thru thus to too toward towards under unless until up upon used ve was wasn wasn't we
were weren weren't what whatever when whence whenever where whereafter whereas whereby wherein whereupon wherever
whether which while whither who whoever whole whom whose why with within without won won't would wouldn wouldn't
y yet you you'd you'll you're you've your yours yourself yourselves
""".split())


def is_attackable(word: str) -> bool:
    """True for a word with a letter that is not a clitic; punctuation and numbers are never attacked."""
    lower = word.lower()
    return any(c.isalpha() for c in word) and not lower.startswith("'") and lower != "n't"


def is_stop_word(word: str) -> bool:
    return word.lower() in STOP_WORDS


def match_case(candidate: str, word: str) -> str:
    """candidate in the case pattern of word (word vectors are lower-case): UPPER, Capitalised or as is."""
    if len(word) > 1 and word.isupper():
        return candidate.upper()
    if word[:1].isupper():
        return candidate[:1].upper() + candidate[1:]
    return candidate


@dataclass(frozen=True)
class Sentence:
    """A text as separators and word slots: ``text == seps[0] + words[0] + seps[1] + … + words[n-1] + seps[n]``.

    Slots keep their index when a word is replaced (even by a string holding a space, as TextBugger's
    insert bug makes), so an attack tracks changes per original word."""

    seps: tuple[str, ...]
    words: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> "Sentence":
        parts = _WORD.split(text)
        return cls(tuple(parts[0::2]), tuple(parts[1::2]))

    @property
    def text(self) -> str:
        out = [self.seps[0]]
        for word, sep in zip(self.words, self.seps[1:]):
            out += [word, sep]
        return "".join(out)

    def replace(self, index: int, word: str) -> "Sentence":
        """The sentence with slot ``index`` holding ``word`` ("" deletes it)."""
        words = list(self.words)
        words[index] = word
        return Sentence(self.seps, tuple(words))

    def text_with(self, index: int, word: str) -> str:
        return self.replace(index, word).text

    def spans(self) -> list[tuple[int, int]]:
        """(start, end) character offsets of each word slot in ``text``."""
        out, pos = [], 0
        for word, sep in zip(self.words, self.seps):
            pos += len(sep)
            out.append((pos, pos + len(word)))
            pos += len(word)
        return out

    def attackable(self) -> list[int]:
        """Slot indices of attackable words (see :func:`is_attackable`)."""
        return [i for i, w in enumerate(self.words) if is_attackable(w)]

    def window(self, index: int, size: int) -> str:
        """The text from the first to the last word of a ``size``-word window around slot ``index``
        (shifted inward at the ends, as TextAttack's ``text_window_around_index``); whole text if shorter."""
        n = len(self.words)
        if n <= size:
            return self.text
        half = (size - 1) / 2
        if index - half < 0:
            start, end = 0, size - 1
        elif index + half >= n:
            start, end = n - size, n - 1
        else:
            start, end = index - math.ceil(half), index + math.floor(half)
        inner = Sentence(("",) + self.seps[start + 1:end + 1] + ("",), self.words[start:end + 1])
        return inner.text


def n_attackable(text: str) -> int:
    """Number of attackable words in ``text``: the denominator of ``words_changed``."""
    return len(Sentence.parse(text).attackable())


def count_changed(original: str, perturbed: str) -> int:
    """Original words that ``perturbed`` changed: positional when both have as many words (word swaps),
    else by a word alignment (difflib), where a word split in two ("go od") counts once."""
    a, b = Sentence.parse(original).words, Sentence.parse(perturbed).words
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b))
    changed = 0
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag in ("replace", "delete"):
            changed += i2 - i1
        elif tag == "insert":
            changed += j2 - j1
    return changed
