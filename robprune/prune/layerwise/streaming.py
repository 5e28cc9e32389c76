"""Forward streaming for layer-wise pruning of a transformer text classifier (docs/methods/kr.md#step-2).

Finds the encoder's Linear layers in forward order, grouped by shared input (Q, K and V read one
tensor), with forward hooks on one example batch rather than by attribute names, so BERT, RoBERTa,
DistilBERT and MiniLM encoders work alike. Streams calibration batches through a model and hands over
the non-padding token rows of the hooked layers' inputs and outputs, one batch at a time: nothing
holds the activations of the whole calibration set. A pass that only needs the first layers stops
early (a private exception raised from a forward hook).

Models are :class:`robprune.models.text.TextClassifier`: ``model(ids)`` with ids (B, L) int64
right-padded with ``model.pad_id``; ``model.mask(ids)`` is that batch's attention mask.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from robprune.errors import ConfigError

F64 = torch.float64
Group = list[tuple[str, nn.Linear]]  # Linear layers reading the same input tensor, in call order


class _Stop(Exception):
    """Raised from a forward hook once a pass has captured everything it needs."""


def encoder_module(model: nn.Module) -> nn.Module:
    """The transformer stack of ``model.hf``: ``base_model.encoder`` (BERT, RoBERTa, MiniLM, ELECTRA)
    or ``base_model.transformer`` (DistilBERT)."""
    base = model.hf.base_model
    for attr in ("encoder", "transformer"):
        if isinstance(getattr(base, attr, None), nn.Module):
            return getattr(base, attr)
    raise ConfigError(f"model.pretrained: {type(base).__name__} has no .encoder or .transformer stack; "
                      "layer-wise language-model pruning supports BERT-, RoBERTa- and DistilBERT-style encoders")


def example_ids(model: nn.Module, length: int = 8) -> torch.Tensor:
    """(1, length) int64 token ids, none of them the pad id, on the model's device."""
    vocab = int(model.hf.get_input_embeddings().num_embeddings)
    ids = [(model.pad_id + 1 + i) % vocab for i in range(length)]
    return torch.tensor([ids], device=next(model.parameters()).device)


@torch.no_grad()
def linear_groups(model: nn.Module, ids: torch.Tensor | None = None) -> tuple[list[Group], list[Group]]:
    """(encoder groups, head groups) of ``model``'s Linear layers in forward order.

    One forward pass of ``ids[:1]`` (default :func:`example_ids`) in eval mode with pre-hooks records
    the call order and input tensor of every Linear; layers called on the very same tensor form a
    group. Encoder groups: layers inside :func:`encoder_module` (per BERT block [[q, k, v],
    [attention.output.dense], [intermediate.dense], [output.dense]]). Head groups: layers outside it
    called after the encoder (BERT: [[pooler.dense], [classifier]]). Embedding projections called
    before the encoder are in neither. model.training is left as it was.
    """
    ids = example_ids(model) if ids is None else ids[:1]
    names = {m: name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    calls: list[tuple[nn.Module, torch.Tensor]] = []  # holding the tensors keeps their identity unique
    handles = [m.register_forward_pre_hook(lambda mod, args: calls.append((mod, args[0]))) for m in names]
    training = model.training
    try:
        model.eval()
        model(ids)
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    groups: list[tuple[torch.Tensor, list[nn.Module]]] = []
    seen: set[nn.Module] = set()
    for module, x in calls:
        if module in seen:
            continue  # a Linear called twice (weight sharing): its first call places it
        seen.add(module)
        group = next((g for g in groups if g[0] is x), None)
        if group is None:
            groups.append((x, [module]))
        else:
            group[1].append(module)
    inside = set(encoder_module(model).modules())
    is_encoder = [g[1][0] in inside for g in groups]
    last = max((i for i, e in enumerate(is_encoder) if e), default=-1)
    if last < 0:
        raise ConfigError(f"{type(model.hf).__name__}: no Linear layer of the encoder ran in a forward pass")
    named = [[(names[m], m) for m in g[1]] for g in groups]
    return ([g for g, e in zip(named, is_encoder) if e],
            [g for i, (g, e) in enumerate(zip(named, is_encoder)) if i > last and not e])


def encoder_linears(model: nn.Module, ids: torch.Tensor | None = None) -> list[Group]:
    """The encoder's Linear layers in forward order, grouped by shared input: per transformer block
    [[q, k, v], [attention.output.dense], [intermediate.dense], [output.dense]] as [(name, module)],
    names as in ``model.named_modules()``. Embeddings, pooler and classifier excluded."""
    return linear_groups(model, ids)[0]


def calibration_batches(model: nn.Module, ids: torch.Tensor, batch_size: int,
                        device: torch.device | str | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(ids (B, L') int64, keep (B, L') bool) per batch of ``batch_size`` rows of ids (N, L), moved to
    device; keep is that batch's own attention mask (``model.mask``). Columns that are padding in every
    row of the batch are cut off (right padding), which changes no non-padding activation."""
    if ids.dim() != 2 or ids.is_floating_point():
        raise ValueError(f"token ids must be an integer tensor (N, L), got {ids.dtype} {tuple(ids.shape)}")
    for start in range(0, len(ids), batch_size):
        batch = ids[start:start + batch_size].to(device=device, dtype=torch.long)
        keep = model.mask(batch).bool()
        used = keep.any(0).nonzero()
        length = int(used.max()) + 1 if len(used) else 1
        yield batch[:, :length], keep[:, :length]


def token_rows(t: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The rows of activation t that belong to real tokens: t (B, L, d) -> (n_tokens, d) by keep (B, L);
    a per-sentence activation (B, d), e.g. the pooler's [CLS] input, is returned whole."""
    if t.shape[:-1] == keep.shape:
        return t[keep]
    if t.dim() == 2 and t.shape[0] == keep.shape[0]:
        return t
    if t.dim() == 2 and t.shape[0] == keep.numel():
        return t[keep.reshape(-1)]
    raise ValueError(f"activation of shape {tuple(t.shape)} matches neither the batch's tokens "
                     f"{tuple(keep.shape)} nor its sentences")


@torch.no_grad()
def capture(model: nn.Module, ids: torch.Tensor, *, inputs: list[nn.Module] = (), outputs: list[nn.Module] = (),
            stop: bool = True) -> tuple[dict[nn.Module, torch.Tensor], dict[nn.Module, torch.Tensor]]:
    """One forward pass of ids that records the input of each module in ``inputs`` and the output of each
    in ``outputs`` (first call each); with stop=True it ends as soon as all are recorded, so a pass for
    the first layers costs only those layers. Returns ({module: input}, {module: output})."""
    got_in: dict[nn.Module, torch.Tensor] = {}
    got_out: dict[nn.Module, torch.Tensor] = {}
    want_in, want_out = set(inputs), set(outputs)

    def hook(module, args, output):
        if module in want_in:
            got_in.setdefault(module, args[0])
        if module in want_out:
            got_out.setdefault(module, output)
        if stop and len(got_in) == len(want_in) and len(got_out) == len(want_out):
            raise _Stop

    handles = [m.register_forward_hook(hook) for m in want_in | want_out]
    try:
        model(ids)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if len(got_in) < len(want_in) or len(got_out) < len(want_out):
        raise RuntimeError("capture: some hooked modules did not run in the forward pass")
    return got_in, got_out


@torch.no_grad()
def stream_inputs(model: nn.Module, ids: torch.Tensor, modules: list[nn.Module], batch_size: int,
                  add: Callable[[nn.Module, torch.Tensor], None], device=None) -> None:
    """Full forward passes over ids (N, L) in batches; ``add(module, rows)`` receives each hooked module's
    input as non-padding token rows (n, d_in), batch by batch (nothing is kept here)."""
    keep_now: list[torch.Tensor] = []
    handles = [m.register_forward_pre_hook(lambda mod, args: add(mod, token_rows(args[0], keep_now[-1])))
               for m in modules]
    try:
        for batch, keep in calibration_batches(model, ids, batch_size, device):
            keep_now[:] = [keep]
            model(batch)
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def reconstruction_report(dense: nn.Module, pruned: nn.Module, ids: torch.Tensor, batch_size: int = 32,
                          device=None) -> list[dict]:
    """Relative output error ‖Ŷ − Y‖_F / ‖Y‖_F of every Linear layer of ``pruned`` (Ŷ: its output in the
    pruned model) against the same layer of ``dense`` (Y: dense output on dense inputs), over the
    non-padding tokens of ids (N, L), then a last row ``logits`` for the model output. Streams batches:
    one forward pass of each model per batch, holding one batch's dense outputs; only the sums
    ‖Ŷ − Y‖² and ‖Y‖² are kept. Returns [{name, rel_error}] in forward order (dense first-call order).
    Both models must have the same module names; they are run as they are (call in eval mode)."""
    dense_names = {m: name for name, m in dense.named_modules() if isinstance(m, nn.Linear)}
    pruned_names = {m: name for name, m in pruned.named_modules() if isinstance(m, nn.Linear)}
    sums: dict[str, list[float]] = {}  # name -> [Σ‖Ŷ − Y‖², Σ‖Y‖²], in dense first-call order
    now: dict = {}                     # this batch: "keep" mask, dense outputs by name

    def store(module, args, output):
        name = dense_names[module]
        if name not in now:
            now[name] = token_rows(output, now["keep"])
            sums.setdefault(name, [0.0, 0.0])

    def compare(module, args, output):
        name = pruned_names[module]
        if name in now:
            _add_error(sums[name], token_rows(output, now["keep"]), now.pop(name))

    for batch, keep in calibration_batches(dense, ids, batch_size, device):
        now.clear()
        now["keep"] = keep
        with _hooks(dense_names, store):
            y = dense(batch)
        with _hooks(pruned_names, compare):
            y_hat = pruned(batch)
        _add_error(sums.setdefault("logits", [0.0, 0.0]), y_hat, y)
    order = [name for name in sums if name != "logits"] + ["logits"]
    return [{"name": name, "rel_error": _ratio(*sums[name])} for name in order if name in sums]


@contextmanager
def _hooks(modules, hook):
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _add_error(acc: list[float], y_hat: torch.Tensor, y: torch.Tensor) -> None:
    acc[0] += float((y_hat.to(F64) - y.to(F64)).square().sum())
    acc[1] += float(y.to(F64).square().sum())


def _ratio(err_sq: float, ref_sq: float) -> float:
    if ref_sq == 0.0:
        return 0.0 if err_sq == 0.0 else float("inf")
    return (err_sq / ref_sq) ** 0.5
