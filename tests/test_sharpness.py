"""SAM, ASAM and AdaSAP: the perturbation maths on a quadratic with a known gradient, BatchNorm
statistics updated once per step, masks preserved, and the one loop driving them."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from robprune.errors import ConfigError
from robprune.train.sharpness import NeuronMap, SharpnessAware, check_node, neuron_map


class Quadratic(nn.Module):
    """L(w) = ½ Σ a·w², so ∂L/∂w = a·w exactly."""

    def __init__(self, w, a):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(w, dtype=torch.float64))
        self.a = torch.tensor(a, dtype=torch.float64)

    def loss(self):
        return 0.5 * (self.a * self.weight ** 2).sum()


def _loss_closure(model, opt):
    def closure():
        opt.zero_grad()
        loss = model.loss()
        loss.backward()
        return loss
    return closure


def _grad_at(model, opt):
    opt.zero_grad()
    model.loss().backward()
    return model.weight.grad.clone()


def test_sam_epsilon_is_rho_g_over_norm_and_step_uses_second_gradient():
    model = Quadratic([[1.0, -2.0], [3.0, 0.5]], [[1.0, 2.0], [0.5, 4.0]])
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = SharpnessAware(model, base, method="sam", rho=0.3)
    w0 = model.weight.detach().clone()
    g = model.a * w0
    _grad_at(model, opt)
    eps = opt.perturbation()[model.weight]
    assert torch.allclose(eps, 0.3 * g / g.norm())  # Foret et al. 2021, Eq. 2
    opt.step(_loss_closure(model, opt))
    g_adv = model.a * (w0 + 0.3 * g / g.norm())
    assert torch.allclose(model.weight.detach(), w0 - 0.1 * g_adv)


def test_asam_epsilon_is_rho_t2g_over_norm_tg():
    model = Quadratic([[1.0, -2.0], [3.0, 0.0]], [[1.0, 2.0], [0.5, 4.0]])
    opt = SharpnessAware(model, torch.optim.SGD(model.parameters(), lr=0.1), method="asam", rho=2.0, eta=0.01)
    _grad_at(model, opt)
    w = model.weight.detach()
    g, t = model.a * w, w.abs() + 0.01
    eps = opt.perturbation()[model.weight]
    assert torch.allclose(eps, 2.0 * t * t * g / (t * g).norm())  # Kwon et al. 2021, Eq. 9


def test_adasap_radii_from_importance_and_per_neuron_normalisation():
    """Three neurons = rows of one weight; row norms 1, 2, 3 → radii ρ_max, mid, ρ_min."""
    model = Quadratic([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]], [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    neurons = NeuronMap(rows={model.weight: torch.tensor([0, 1, 2])}, n=3)
    opt = SharpnessAware(model, torch.optim.SGD(model.parameters(), lr=0.1), method="adasap",
                         rho_min=0.1, rho_max=1.0, eta=0.01, neurons=neurons, normalize="neuron")
    _grad_at(model, opt)
    eps = opt.perturbation()[model.weight]
    assert torch.allclose(opt.last_radii, torch.tensor([1.0, 0.55, 0.1], dtype=opt.last_radii.dtype))
    w = model.weight.detach()
    g, t = w.clone(), w.abs() + 0.01
    for i, rho in enumerate([1.0, 0.55, 0.1]):  # Bair et al. 2024 §3.1: ε_i = ρ_i T_i² g_i / ‖T_i g_i‖
        expect = rho * t[i] ** 2 * g[i] / (t[i] * g[i]).norm()
        assert torch.allclose(eps[i], expect)
        assert (eps[i] / t[i]).norm().item() == pytest.approx(rho, rel=1e-6)


def test_adasap_global_normalisation_scales_asam_per_neuron():
    """normalize=global (the default): ε_i = ρ_i T_i² g_i / ‖T g‖, i.e. ASAM's step with each neuron's radius."""
    model = Quadratic([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]], [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    neurons = NeuronMap(rows={model.weight: torch.tensor([0, 1, 2])}, n=3)
    opt = SharpnessAware(model, torch.optim.SGD(model.parameters(), lr=0.1), method="adasap",
                         rho_min=0.1, rho_max=1.0, eta=0.01, neurons=neurons)
    _grad_at(model, opt)
    eps = opt.perturbation()[model.weight]
    w = model.weight.detach()
    g, t = w.clone(), w.abs() + 0.01
    radii = torch.tensor([1.0, 0.55, 0.1], dtype=w.dtype)
    assert torch.allclose(eps, radii[:, None] * t * t * g / (t * g).norm())


def test_adasap_neurons_follow_torch_pruning_groups():
    """A neuron = a conv's output row + its BN γ/β entries; the next conv's input slice is not in it."""
    from robprune.prune.channel.structured import build_groups

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.BatchNorm2d(6),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))
    _, groups = build_groups(model, torch.zeros(1, 3, 8, 8), exclude_stem=False, exclude_linear=True)
    nm = neuron_map(model, groups)
    assert nm.n == 4 + 6
    first, second = nm.rows[model[0].weight], nm.rows[model[3].weight]
    assert torch.equal(nm.rows[model[1].weight], first) and torch.equal(nm.rows[model[1].bias], first)
    assert torch.equal(nm.rows[model[4].bias], second) and torch.equal(nm.rows[model[0].bias], first)
    assert sorted(torch.cat([first, second]).tolist()) == list(range(10))  # every channel one neuron
    assert model[8].weight not in nm.rows


def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


@pytest.mark.parametrize("method", ["sam", "asam", "adasap"])
def test_batchnorm_statistics_updated_once_per_step(method):
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 3, (8,))
    plain, wrapped = _bn_net(), _bn_net()
    from robprune.prune.channel.structured import build_groups
    _, groups = build_groups(wrapped, x[:1], exclude_stem=False, exclude_linear=True)
    plain.train(), wrapped.train()
    opt = SharpnessAware(wrapped, torch.optim.SGD(wrapped.parameters(), lr=0.0), method=method, rho=0.5,
                         neurons=neuron_map(wrapped, groups))
    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(wrapped(x), y)
        loss.backward()
        return loss
    opt.step(closure)
    plain(x)  # one forward pass: the statistics a single step must leave
    bn_p, bn_w = plain[1], wrapped[1]
    assert int(bn_w.num_batches_tracked) == 1
    assert torch.allclose(bn_w.running_mean, bn_p.running_mean) and torch.allclose(bn_w.running_var, bn_p.running_var)


@pytest.mark.parametrize("method", ["sam", "asam"])
def test_masked_weights_stay_zero_and_unperturbed(method):
    model = _bn_net()
    w = model[4].weight
    mask = torch.rand_like(w) > 0.5
    with torch.no_grad():
        w.mul_(mask)
    opt = SharpnessAware(model, torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9), method=method, rho=1.0)
    opt.masks[w] = mask
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 3, (8,))
    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss
    for _ in range(3):
        opt.step(closure)
        assert bool((w[~mask] == 0).all())
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    assert bool((opt.perturbation()[w][~mask] == 0).all())
    assert bool((w[mask] != 0).any())  # the kept weights did train


def test_clipping_acts_on_the_second_gradient():
    model = Quadratic([[10.0, -20.0]], [[1.0, 1.0]])
    opt = SharpnessAware(model, torch.optim.SGD(model.parameters(), lr=1.0), method="sam", rho=0.1, clip_grad_norm=1.0)
    w0 = model.weight.detach().clone()
    opt.step(_loss_closure(model, opt))
    assert (w0 - model.weight.detach()).norm().item() == pytest.approx(1.0, rel=1e-6)


def test_the_one_loop_trains_with_sam_and_resumes_its_base_state(tmp_path):
    from robprune.train import fit

    torch.manual_seed(0)
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 3, (64,))
    model = _bn_net()
    opt = SharpnessAware(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), method="asam", rho=0.5)
    loader = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    objective = lambda m, a, b: nn.functional.cross_entropy(m(a), b)
    hist = fit(model, loader, objective, opt, epochs=3, lr_factor=lambda e: 1.0, generator=torch.Generator(),
               checkpoint_dir=tmp_path, progress=False)
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert opt.base.state and all("momentum_buffer" in s for s in opt.base.state.values())


@pytest.mark.parametrize("node, match", [
    ({"method": "sharp"}, "sharpness.method must be one of"),
    ({"method": "sam", "rho": 0}, "rho must be > 0"),
    ({"method": "adasap", "rho_min": 2.0, "rho_max": 1.0}, r"rho_min \(2.0\) is above"),
    ({"method": "adasap", "rho_min": 0.0}, "rho_min must be > 0"),
    ({"method": "adasap", "importance": "l7"}, "importance must be one of"),
    ({"method": "asam", "clip_grad_norm": -1}, "clip_grad_norm must be > 0"),
    ({"method": "adasap", "normalize": "layer"}, "normalize must be one of"),
    ({"method": "asam", "eta": -0.1}, "eta must be >= 0"),
])
def test_bad_sharpness_nodes_are_one_line_errors(node, match):
    with pytest.raises(ConfigError, match=match):
        check_node(node, "train.sharpness")


def test_the_optimizer_refuses_a_bad_normalisation_and_a_stepless_call():
    model = Quadratic([[1.0]], [[1.0]])
    with pytest.raises(ConfigError, match="sharpness.normalize must be one of"):
        SharpnessAware(model, torch.optim.SGD(model.parameters(), lr=0.1), method="adasap", normalize="layer")
    opt = SharpnessAware(model, torch.optim.SGD(model.parameters(), lr=0.1), method="sam")
    with pytest.raises(RuntimeError, match="needs step\\(closure\\)"):
        opt.step()


def test_a_weight_mask_hook_hands_its_masks_to_a_two_pass_optimizer():
    """Fine-tuning an unstructured-pruned model with SAM: WeightMask.bind (called by the training stage)
    gives the optimizer the masks, so the zeros get no perturbation and stay zero."""
    from robprune.prune.masks import WeightMask

    model = _bn_net()
    with torch.no_grad():
        model[4].weight[:, ::2] = 0
    hook = WeightMask.from_zeros(model)
    opt = SharpnessAware(model, torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9), method="sam", rho=1.0)
    hook.bind(opt, model)
    assert set(opt.masks) == {model[4].weight} and opt.masks[model[4].weight].dtype == torch.bool
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 3, (8,))

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss
    opt.step(closure)
    assert bool((model[4].weight[:, ::2] == 0).all())
