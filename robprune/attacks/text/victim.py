"""The attacked text classifier behind a black-box interface: texts in, class probabilities out.

The model is the cost of every text attack, so :meth:`Victim.predict` takes all candidate texts of
an attack step at once: one tokenizer call, texts sorted by token length and cut into batches of
``batch_size``, each padded only to its own longest text (dynamic padding), not to ``max_length``.
"""
from __future__ import annotations

import torch
from torch import nn

from robprune.errors import ConfigError


class Victim:
    """model: ``forward(input_ids (B, L) int64, right-padded with tokenizer.pad_token_id) -> logits (B, C)``
    (robprune.models.text.TextClassifier; the attention mask is derived inside from the pad id).
    tokenizer: a transformers tokenizer (fast or not) with a pad token. max_length: tokens per text
    including special tokens; longer texts are truncated. ``queries`` counts texts predicted (one per
    text, as TextAttack counts them). The caller puts the model in eval mode; outputs are deterministic."""

    def __init__(self, model: nn.Module, tokenizer, *, max_length: int, batch_size: int, device: torch.device | str):
        if tokenizer.pad_token_id is None:
            raise ConfigError(f"the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no pad token; the text "
                              f"model derives its attention mask from it, so give the tokenizer a [PAD] token")
        self.model, self.tokenizer = model, tokenizer
        self.max_length, self.batch_size = int(max_length), int(batch_size)
        self.device = torch.device(device)
        self.queries = 0

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text, with special tokens, truncated to max_length (no padding)."""
        return self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]

    @torch.inference_mode()
    def predict(self, texts: list[str]) -> torch.Tensor:
        """(n, C) float32 class probabilities on the CPU, row i for texts[i]; adds n to ``queries``."""
        self.queries += len(texts)
        if not texts:
            return torch.zeros(0, 0)
        ids = self.encode(texts)
        order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))
        out: torch.Tensor | None = None
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            probs = self.model(self._padded([ids[i] for i in rows])).float().softmax(dim=1).cpu()
            if out is None:
                out = torch.empty(len(texts), probs.shape[1])
            out[torch.tensor(rows)] = probs
        return out

    def _padded(self, rows: list[list[int]]) -> torch.Tensor:
        """(B, longest) int64 on the device, right-padded with the pad id."""
        width = max(len(r) for r in rows)
        batch = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.int64)
        for i, r in enumerate(rows):
            batch[i, :len(r)] = torch.tensor(r, dtype=torch.int64)
        return batch.to(self.device)
