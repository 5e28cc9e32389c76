"""Sharpness-aware optimizers as wrappers of any base optimizer: SAM, ASAM and AdaSAP's per-neuron radius.

All three are two-pass: ``step(closure)`` takes the gradient g at w, moves to w + ε, takes the gradient
there, returns to w and lets the base optimizer step with that second gradient. They drive the one loop
(:func:`robprune.train.fit` calls ``optimizer.step(closure)``) and expose the base optimizer's
``param_groups`` and state, so lr schedules and epoch checkpoints work unchanged.

Pitfalls handled (docs/methods/adasap.md):
- BatchNorm running statistics are updated once per step: the second pass restores them.
- Gradient clipping (``clip_grad_norm``) acts on the second gradient, just before the base step
  (clipping the first gradient does nothing: ε is normalised).
- Masked weights (``masks``: {parameter: bool tensor, True = kept}) get no perturbation and no gradient,
  and are zeroed again after the step, since T = |w| + η perturbs zeros too.

Perturbations, with g the first gradient and blocks normalised separately:
- SAM (Foret et al., ICLR 2021, Eq. 2): ε = ρ · g / ‖g‖ over all parameters.
- ASAM (Kwon et al., ICML 2021, Eq. 9 with T_w = |w| + η): ε = ρ · T² g / ‖T g‖; T = |w| + η for
  weights (tensors named ``*weight``, incl. norm layers' γ, as in ASAM's reference code), T = 1 otherwise.
- AdaSAP (Bair et al., ICLR 2024, §3.1): per neuron i (an output channel with its norm-layer entries and
  every coupled layer's matching channel) ε_i = ρ_i · T_i² g_i / ‖T g‖ (``normalize: global``, the default:
  ASAM's network-wide norm; ``neuron`` divides by ‖T_i g_i‖ as the paper writes it (docs/methods/adasap.md#step-1), which at ρ_max = 2
  moves every neuron by twice its own scale and collapsed training to chance on MNIST; docs/methods/adasap.md#step-1), with radius
  ρ_i = ρ_max − (s_i − s_min)/(s_max − s_min) · (ρ_max − ρ_min) from the neuron's importance s_i, so the
  least important neurons (the next to be pruned) are pushed into flat regions hardest. Parameters the
  pruner never removes get ρ_min, one neuron per output row.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from robprune.errors import ConfigError
from robprune.options import Choice, Float, option
from robprune.registry import SHARPNESS

IMPORTANCES = ("l2", "taylor")
NORMALIZE = ("global", "neuron")  # AdaSAP: ‖T g‖ over the whole network (ASAM's) | per neuron ‖T_i g_i‖


@dataclass
class NeuronMap:
    """Which output rows of which parameters form each prunable neuron.

    rows: {parameter: (dim-0 length,) int64 neuron id per row; -1 = not prunable}; ``n`` neurons in all.
    Built from Torch-Pruning's dependency groups by :func:`neuron_map`.
    """

    rows: dict[nn.Parameter, torch.Tensor]
    n: int


def neuron_map(model: nn.Module, groups) -> NeuronMap:
    """Neurons of ``groups`` (:class:`robprune.prune.channel.structured.PrunableGroup`): channel j of a group is one
    neuron, made of row j (in the root's numbering) of every member conv/linear (weight, bias) and of every
    norm layer in the group (γ, β). The next layer's input slice is that layer's own weights, not the neuron's."""
    from torch.nn.modules.batchnorm import _BatchNorm

    rows: dict[nn.Parameter, torch.Tensor] = {}
    offset = 0
    for group in groups:
        for item in group.tp_group:
            module, handler = item.dep.target.module, item.dep.handler
            is_filter = isinstance(module, (nn.Conv2d, nn.Linear)) and handler.__name__.endswith("out_channels")
            is_norm = isinstance(module, (_BatchNorm, nn.GroupNorm, nn.LayerNorm))
            if not (is_filter or is_norm):
                continue
            for param in (getattr(module, "weight", None), getattr(module, "bias", None)):
                if not isinstance(param, nn.Parameter):
                    continue
                ids = rows.setdefault(param, torch.full((param.shape[0],), -1, dtype=torch.long))
                ids[torch.as_tensor(item.idxs, dtype=torch.long)] = offset + torch.as_tensor(item.root_idxs, dtype=torch.long)
        offset += group.channels
    return NeuronMap(rows=rows, n=offset)


@contextmanager
def frozen_norm_statistics(model: nn.Module):
    """Run a forward pass without changing any BatchNorm running statistic (the second SAM pass)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    saved = [(m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, mean, var, count in saved:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


class SharpnessAware(torch.optim.Optimizer):
    """Two-pass wrapper; ``method`` is one of sam | asam | adasap. See the module docstring.

    model: the trained module (for BatchNorm statistics and parameter names). base: the wrapped optimizer.
    neurons: required for adasap (see :func:`neuron_map`); ``set_neurons`` replaces it after a cut.
    """

    def __init__(self, model: nn.Module, base: torch.optim.Optimizer, *, method: str = "sam", rho: float = 0.05,
                 eta: float = 0.01, rho_min: float = 0.01, rho_max: float = 2.0, importance: str = "l2",
                 clip_grad_norm: float | None = None, neurons: NeuronMap | None = None, normalize: str = "global"):
        if method not in METHODS[1:]:
            raise ConfigError(f"sharpness.method must be one of {', '.join(METHODS)}, got {method!r}")
        self.model, self.base, self.method = model, base, method
        self.rho, self.eta, self.rho_min, self.rho_max = float(rho), float(eta), float(rho_min), float(rho_max)
        if normalize not in NORMALIZE:
            raise ConfigError(f"sharpness.normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}")
        self.importance, self.clip_grad_norm, self.normalize = importance, clip_grad_norm, normalize
        self.masks: dict[nn.Parameter, torch.Tensor] = {}
        self.neurons = neurons
        self.names = {p: n for n, p in model.named_parameters()}
        self.last_radii: torch.Tensor | None = None  # AdaSAP: ρ_i of the last step (for tests and logs)
        # share the base optimizer's groups, state and defaults: schedules and checkpoints see one optimizer
        self.param_groups, self.state, self.defaults = base.param_groups, base.state, base.defaults

    # checkpoints save and restore the base optimizer (the wrapper itself holds no state across steps)
    def state_dict(self):
        return self.base.state_dict()

    def load_state_dict(self, state_dict):
        self.base.load_state_dict(state_dict)

    def zero_grad(self, set_to_none: bool = True):
        self.base.zero_grad(set_to_none=set_to_none)

    def set_neurons(self, neurons: NeuronMap) -> None:
        self.neurons = neurons

    def _params(self) -> list[nn.Parameter]:
        return [p for group in self.param_groups for p in group["params"] if p.grad is not None]

    def _scale(self, p: nn.Parameter) -> torch.Tensor | None:
        """T for ASAM/AdaSAP (None = 1): |w| + η for weights."""
        if self.method == "sam" or not self.names.get(p, "").endswith("weight"):
            return None
        return p.detach().abs() + self.eta

    @torch.no_grad()
    def perturbation(self) -> dict[nn.Parameter, torch.Tensor]:
        """ε for every parameter with a gradient, from the current gradients (the first pass)."""
        params = self._params()
        tg = {}
        for p in params:
            g = p.grad * self.masks[p] if p in self.masks else p.grad
            t = self._scale(p)
            tg[p] = (g, t, g if t is None else t * g)
        if self.method in ("sam", "asam"):
            norm = torch.sqrt(sum(v[2].pow(2).sum() for v in tg.values())) + 1e-12
            return {p: self.rho * (g if t is None else t * t * g) / norm for p, (g, t, _) in tg.items()}
        return self._adasap(tg)

    def _adasap(self, tg) -> dict[nn.Parameter, torch.Tensor]:
        if self.neurons is None:
            raise RuntimeError("AdaSAP needs the neuron map (set_neurons) before its first step")
        n = self.neurons.n
        first = next(iter(tg)) if tg else torch.zeros(())
        device, dtype = first.device, first.dtype
        sq = torch.zeros(n, device=device, dtype=dtype)   # Σ (T g)² per prunable neuron
        imp = torch.zeros(n, device=device, dtype=dtype)  # Σ w² (l2) or Σ w·g (taylor) per neuron
        ids_of = {}
        for p, (g, t, tgp) in tg.items():
            ids = self.neurons.rows.get(p)
            if ids is None:
                continue
            ids = ids.to(device)
            ids_of[p] = ids
            sel = ids >= 0
            rows_sq = tgp.reshape(len(ids), -1).pow(2).sum(1)
            w = p.detach().reshape(len(ids), -1)
            rows_imp = w.pow(2).sum(1) if self.importance == "l2" else (w * g.reshape(len(ids), -1)).sum(1)
            sq.index_add_(0, ids[sel], rows_sq[sel])
            imp.index_add_(0, ids[sel], rows_imp[sel])
        # s_i: L2 norm of the neuron's weights, or |first-order Taylor| (Molchanov et al. 2019, Eq. 8 unsquared)
        s = imp.clamp_min(0).sqrt() if self.importance == "l2" else imp.abs()
        alive = self._alive(n, device)
        lo, hi = (s[alive].min(), s[alive].max()) if bool(alive.any()) else (s.new_zeros(()), s.new_zeros(()))
        frac = ((s - lo) / (hi - lo)).clamp(0, 1) if float(hi - lo) > 0 else torch.zeros_like(s)
        radii = self.rho_max - frac * (self.rho_max - self.rho_min)  # Bair et al. 2024, §3.1 (linear in s)
        self.last_radii = radii
        if self.normalize == "neuron":               # the paper's literal ε_i = ρ_i T_i² g_i / ‖T_i g_i‖ (docs/methods/adasap.md#step-1)
            coef = radii / (sq.sqrt() + 1e-12)
        else:                                        # ASAM's global ‖T g‖ with the per-neuron ρ_i (docs/methods/adasap.md#step-1: resolution)
            total = torch.sqrt(sum(v[2].pow(2).sum() for v in tg.values())) + 1e-12
            coef = radii / total
        eps = {}
        for p, (g, t, tgp) in tg.items():
            tt_g = g if t is None else t * t * g
            ids = ids_of.get(p)                     # None: never pruned, one block per output row with ρ_min
            rows = tgp.reshape(tgp.shape[0], -1) if tgp.dim() else tgp.reshape(1, 1)
            row_norm = rows.pow(2).sum(1).sqrt() + 1e-12 if self.normalize == "neuron" else total
            c = self.rho_min / row_norm
            if ids is not None:
                sel = ids >= 0
                c = torch.where(sel, coef[ids.clamp_min(0)], c)
            shape = (-1,) + (1,) * (tt_g.dim() - 1) if tt_g.dim() else ()
            eps[p] = tt_g * (c.reshape(shape) if tt_g.dim() else c.reshape(()))
        return eps

    def _alive(self, n: int, device) -> torch.Tensor:
        """Neurons not masked out (a pruned neuron has every mask row False)."""
        alive = torch.zeros(n, dtype=torch.bool, device=device)
        seen = torch.zeros(n, dtype=torch.bool, device=device)
        for p, ids in self.neurons.rows.items():
            ids = ids.to(device)
            sel = ids >= 0
            if p in self.masks:
                kept = self.masks[p].reshape(len(ids), -1).any(1)
            else:
                kept = torch.ones(len(ids), dtype=torch.bool, device=device)
            alive.index_put_((ids[sel],), kept[sel], accumulate=True)
            seen[ids[sel]] = True
        return alive | ~seen

    @torch.no_grad()
    def _apply_masks(self, grads: bool) -> None:
        for p, mask in self.masks.items():
            if grads and p.grad is not None:
                p.grad.mul_(mask)
            elif not grads:
                p.mul_(mask)

    def step(self, closure: Callable[[], torch.Tensor] | None = None):  # type: ignore[override]
        if closure is None:
            raise RuntimeError(f"{self.method} needs step(closure): it evaluates the loss twice")
        with torch.enable_grad():
            loss = closure()                        # pass 1: g at w (BN statistics update here, once)
        eps = self.perturbation()
        with torch.no_grad():
            for p, e in eps.items():
                p.add_(e)                           # w + ε
        with torch.enable_grad(), frozen_norm_statistics(self.model):
            closure()                               # pass 2: gradient at w + ε
        with torch.no_grad():
            for p, e in eps.items():
                p.sub_(e)                           # back to w
        self._apply_masks(grads=True)
        if self.clip_grad_norm:
            nn.utils.clip_grad_norm_(self._params(), float(self.clip_grad_norm))
        self.base.step()
        self._apply_masks(grads=False)
        return loss


# The optimizer wrappers a train node's sharpness.method names (docs/methods/adasap.md): one class, three
# perturbations. "none" is no wrapper.
SHARPNESS.add("sam", SharpnessAware, perturbation="ε = ρ·g/‖g‖ (Foret et al. 2021)")
SHARPNESS.add("asam", SharpnessAware, perturbation="ε = ρ·T²g/‖T g‖, T = |w| + η (Kwon et al. 2021)")
SHARPNESS.add("adasap", SharpnessAware, perturbation="ASAM with a per-neuron ρ_i from its importance (Bair et al. 2024)")
METHODS = ("none", *SHARPNESS.names())

@dataclass(frozen=True)
class SharpnessOptions:
    """A train node's ``sharpness`` options, declared once: the schema of the node, its defaults, and what
    :class:`SharpnessAware` is built with (docs/methods/adasap.md)."""

    method: str = option("none", Choice(*METHODS), help="none (plain optimizer) | sam | asam | adasap: the two-pass "
                         "optimizer around the base one")
    rho: float = option(0.05, Float(0, low_open=True, example="0.05"), help="SAM/ASAM radius")
    eta: float = option(0.01, Float(0, example="0.01"), help="T = |w| + eta (ASAM's adaptive scale)")
    rho_min: float = option(0.01, Float(0, low_open=True, example="0.01"), help="AdaSAP: radius of the most important "
                            "neurons and of never-pruned parameters")
    rho_max: float = option(2.0, Float(0, low_open=True, example="2.0"), help="AdaSAP: radius of the least important "
                            "neurons, >= rho_min")
    importance: str = option("l2", Choice(*IMPORTANCES), help="AdaSAP: the neuron importance behind the radii")
    normalize: str = option("global", Choice(*NORMALIZE), help="AdaSAP: global ε_i = ρ_i·T_i²g_i/‖T g‖ (ASAM's) | "
                            "neuron: /‖T_i g_i‖ (docs/methods/adasap.md#step-1)")
    clip_grad_norm: float | None = option(None, Float(0, low_open=True, null=True, example="1.0"),
                                          help="clip the second-pass gradient to this L2 norm; null = no clipping")


def sharpness_options(node, path: str) -> SharpnessOptions:
    """The sharpness node as :class:`SharpnessOptions` (declared defaults for keys it leaves out), checked:
    each key against its declaration, and rho_min <= rho_max for AdaSAP (ConfigError naming the key)."""
    from robprune.train.fast import options

    opts = options(SharpnessOptions, node, path)  # the one declared-node reader (also lookahead, monitor)
    if opts.method == "adasap" and float(opts.rho_min) > float(opts.rho_max):
        raise ConfigError(f"{path}.rho_min ({float(opts.rho_min)}) is above {path}.rho_max ({float(opts.rho_max)}); "
                          "set rho_min <= rho_max")
    return opts


def wrap(cfg, model: nn.Module, base: torch.optim.Optimizer, key: str, *, neurons: NeuronMap | None = None):
    """The optimizer a train/finetune node asks for: ``base`` itself, or wrapped per its ``sharpness`` node.
    Raises ConfigError (exit 2) for a bad node; :func:`robprune.validate` runs the same check before work."""
    node = cfg.get("sharpness") if cfg is not None else None
    opts = sharpness_options(node, f"{key}.sharpness")
    if opts.method == "none":
        return base
    return SharpnessAware(model, base, method=opts.method, rho=opts.rho, eta=opts.eta, rho_min=opts.rho_min,
                          rho_max=opts.rho_max, importance=opts.importance, clip_grad_norm=opts.clip_grad_norm,
                          neurons=neurons, normalize=opts.normalize)


def check_node(node, path: str) -> None:
    """One-line ConfigErrors for a sharpness node (see :func:`sharpness_options`)."""
    sharpness_options(node, path)
