"""Word- and character-level attacks on text classifiers, offline, behind one contract:

    attack(victim, text: str, label: int, *, seed: int, **params) -> TextAttackResult

``victim`` is a :class:`Victim` (texts -> class probabilities, counting queries); parameters are bound
with ``_partial_: true`` in ``conf/attack/<name>.yaml``; ``attack.check_params(where=..., **params)``
validates them first. Candidate words come from a word-vector table shipped as a package (GloVe 6B
50-d) or a user file, similarity from a sentence encoder shipped as a package (the Universal Sentence
Encoder, all-MiniLM-L6-v2) or a local folder, part-of-speech tags from spaCy's tagger package: nothing
is downloaded. Each attack registers itself in :data:`robprune.registry.ATTACKS` with ``modality="text"``; the
contract tests run over every registered one.
"""
from robprune.attacks.text.base import STATUSES, AttackState, TextAttackResult, change_limit
from robprune.attacks.text.bert_attack import bert_attack
from robprune.attacks.text.encoder import (MINILM, USE, Encoder, SentenceEncoder, UniversalSentenceEncoder, angular,
                                          load_encoder)
from robprune.attacks.text.textbugger import textbugger
from robprune.attacks.text.textfooler import textfooler
from robprune.attacks.text.vectors import GLOVE, WordVectors, load_vectors
from robprune.attacks.text.victim import Victim
from robprune.attacks.text.words import STOP_WORDS, Sentence, count_changed, is_attackable, is_stop_word, n_attackable

__all__ = ["GLOVE", "MINILM", "STATUSES", "STOP_WORDS", "USE", "AttackState", "Encoder", "Sentence", "SentenceEncoder",
           "TextAttackResult", "UniversalSentenceEncoder", "Victim", "WordVectors", "angular", "bert_attack",
           "change_limit", "count_changed", "is_attackable", "is_stop_word", "load_encoder", "load_vectors",
           "n_attackable", "textbugger", "textfooler"]
