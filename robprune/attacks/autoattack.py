"""AutoAttack (Croce & Hein 2020) through pyautoattack, behind robprune's attack contract.

:func:`autoattack` is the contract ``attack(model, x, y) -> x_adv``. :func:`run_autoattack` (also
reachable as ``autoattack.whole_subset``, which evaluation looks for) runs the ensemble once over a
whole subset, records the robust flags after each sub-attack and, given ``state_path``, resumes
after a kill from a state file written after every finished sub-attack.

Why robprune keeps its own state instead of pyautoattack's ``state_path``: in pyautoattack 0.2.0 a
restored EvaluationState always fails its attack-set check (a JSON list compared with a set), its
resume path never defines ``y_adv``, its writes are not atomic and the list of finished attacks is
saved lazily (60 s), so it cannot resume at all, let alone reproduce an uninterrupted run. Instead
each sub-attack is run the documented way (``attacks_to_run = [attack]``) by the library's own
``run_standard_evaluation`` on the points still robust, which is what its single call does inside
(same points in the same order and batches, each sub-attack reseeded with ``seed``), so the flags
equal the single call's; the Square check (``check_square_sr``) gets the accuracies after every
sub-attack, as inside the single call.

pyautoattack logs through ``logging.getLogger('auto-attack')``: progress at DEBUG and its sanity
checks (randomised or dynamic defence, probabilities instead of logits, Square beating the
white-box attacks, zero gradients) at WARNING. During a call its records are re-emitted on the
``robprune.attacks.autoattack`` logger, and :func:`capture_warnings` collects the check warnings
so that evaluation can report them under ``checks``.
"""
from __future__ import annotations

import hashlib
import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, NamedTuple

import torch
from torch import nn

from robprune.attacks.common import check_choice, check_eps, check_min, preserved_grads, preserved_modes
from robprune.errors import ConfigError
from robprune.io import (DamagedFile, atomic_save_sealed_tensors, atomic_write_sealed_json, load_sealed_tensors,
                         read_sealed_json, set_aside)
from robprune.options import EPS, SEED, SIZE, Choice, Int, Value
from robprune.registry import ATTACKS

AA_LOGGER = "auto-attack"  # the name pyautoattack logs under
LOGGER = "robprune.attacks.autoattack"
AA_NORMS = ("Linf", "L2", "L1")
AA_VERSIONS = ("standard", "plus", "rand", "custom")
AA_ATTACKS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
STATE_FORMAT = 1  # bump when the state file's layout changes; older files are ignored


class AutoAttackResult(NamedTuple):
    """x_adv: (N, C, H, W) in [0, 1] on x's device (x itself where no sub-attack succeeded);
    robust_after: sub-attack name -> (N,) bool on the CPU, still correct after it and all before it,
    in run order; resumed: sub-attacks restored from the state file instead of run."""

    x_adv: torch.Tensor
    robust_after: dict[str, torch.Tensor]
    resumed: int


@ATTACKS.register("autoattack", modality="image")
def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
               eps: Annotated[float, EPS, "budget in pixel units ([0,1] images)"],
               norm: Annotated[str, Choice(*AA_NORMS), "Linf | L2 | L1 (pyautoattack's spelling); use eps ${dataset.eps_l2} with L2"] = "Linf",
               version: Annotated[str, Choice(*AA_VERSIONS), "standard = APGD-CE, APGD-T, FAB-T, Square | plus | rand | custom"] = "standard",
               attacks: Annotated[list | None, Value("list", null=True, item=Choice(*AA_ATTACKS), example="[apgd-ce,square]"),
                                  "list for version custom, from apgd-ce, apgd-dlr, fab, square, apgd-t, fab-t; null otherwise"] = None,
               seed: Annotated[int | None, SEED, "seeds every sub-attack; null = drawn from torch's seeded RNG"] = 0,
               batch_size: Annotated[int, SIZE, "pyautoattack's internal batch (images)"] = 500,
               n_iter: Annotated[int | None, Int(1, null=True, example="100"), "APGD/FAB iterations; null = AutoAttack's 100 (lower only for smoke runs)"] = None,
               n_queries: Annotated[int | None, Int(1, null=True, example="5000"), "Square queries; null = AutoAttack's 5000 (lower only for smoke runs)"] = None
               ) -> torch.Tensor:
    """AutoAttack adversarial examples, (N, C, H, W) in [0, 1], detached, on x's device.

    eps: budget in pixel units; norm: 'Linf' | 'L2' | 'L1' (pyautoattack's spelling); version:
    'standard' (APGD-CE, APGD-T, FAB-T, Square), 'plus', 'rand', or 'custom' with ``attacks`` a list
    of 'apgd-ce', 'apgd-dlr', 'fab', 'square', 'apgd-t', 'fab-t' (giving ``attacks`` implies
    custom); seed: seeds every sub-attack (None: drawn from torch's global RNG, so still seeded by
    the pipeline); batch_size: pyautoattack's batch; n_iter / n_queries: override APGD and FAB
    iterations (100) / Square queries (5000) for cheap smoke runs; None keeps AutoAttack's values.
    Runs the model in eval mode; restores modes, parameter gradients and torch's global RNG state
    (pyautoattack reseeds it) afterwards.
    """
    return run_autoattack(model, x, y, eps=eps, norm=norm, version=version, attacks=attacks, seed=seed,
                          batch_size=batch_size, n_iter=n_iter, n_queries=n_queries).x_adv


def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "Linf",
                   version: str = "standard", attacks: list[str] | None = None, seed: int | None = 0,
                   batch_size: int = 500, n_iter: int | None = None, n_queries: int | None = None,
                   state_path: Path | None = None, label: str = "autoattack") -> AutoAttackResult:
    """AutoAttack once over all of x (batching inside), with the flags after each sub-attack.

    Arguments as :func:`autoattack`. state_path: a JSON state file (plus ``<stem>.adv.safetensors``
    beside it) written atomically after every finished sub-attack; when it exists and matches this
    call (same x, y, model weights and settings), finished sub-attacks are not rerun and one INFO
    line ``<label>: resuming AutoAttack from <file> (<k> of <n> attacks done)`` goes to the
    ``robprune`` logger. The result equals an uninterrupted run's. Warnings raised by finished
    sub-attacks are stored and re-emitted on resume, so :func:`capture_warnings` sees them all.
    """
    from pyautoattack import AutoAttack, checks

    eps, version = check_eps(eps), ("custom" if attacks is not None else version)
    _check_args(norm, version, attacks, batch_size, n_iter, n_queries)
    x, y = x.detach(), y.detach().long()
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    settings = dict(eps=eps, norm=norm, version=version, attacks=attacks, seed=int(seed),
                    batch_size=batch_size, n_iter=n_iter, n_queries=n_queries)
    with preserved_modes(model, eval_mode=True), preserved_grads(model), _forked_rng(x.device), routed_logs():
        adversary = AutoAttack(model, attacks=list(attacks) if attacks is not None else None,
                               device=x.device, eps=eps, norm=norm, seed=int(seed), version=version)
        if x.shape[0] == 0:
            return AutoAttackResult(x.clone(), {a: torch.zeros(0, dtype=torch.bool) for a in adversary.attacks_to_run}, 0)
        _configure(adversary, model, x, n_iter, n_queries)
        state = _State.open(state_path, _fingerprint(model, x, y, settings), list(adversary.attacks_to_run),
                            _predict(model, x, batch_size) == y.cpu(), x)
        if state.done:
            logging.getLogger("robprune").info("%s: resuming AutoAttack from %s (%d of %d attacks done)",
                                               label, state_path, len(state.done), len(state.attacks))
        for attack in state.attacks[len(state.done):]:
            with capture_warnings() as warnings:
                _run_one(adversary, model, attack, x, y, state, batch_size)
            state.finish(attack, warnings)
        checks.check_square_sr(state.accuracies(), logger=logging.getLogger(AA_LOGGER))
        return AutoAttackResult(state.x_adv.to(x.device), dict(state.robust_after), len(state.resumed))


autoattack.whole_subset = run_autoattack  # evaluation runs this once over a subset instead of per batch


def _run_one(adversary, model: nn.Module, attack: str, x, y, state: "_State", batch_size: int) -> None:
    """One sub-attack through the library on the points still robust; updates state in place."""
    todo = state.robust.nonzero().squeeze(1)
    if todo.numel() == 0:
        return
    adversary.attacks_to_run = [attack]
    x_adv, _ = adversary.run_standard_evaluation(x[todo.to(x.device)], y[todo.to(y.device)], batch_size=batch_size)
    fooled = _predict(model, x_adv, batch_size) != y[todo.to(y.device)].cpu()
    state.x_adv[todo[fooled]] = x_adv[fooled.to(x_adv.device)].detach().cpu()
    state.robust[todo[fooled]] = False


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N,) int64 on the CPU: the model's top-1 class for x, in batches."""
    out = [model(x[i:i + batch_size]).argmax(1).cpu() for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def _fingerprint(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: dict) -> str:
    """sha256 over the inputs, labels, model weights and settings: a state file from another call never matches."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    tensors = [x, y, *(t for t in model.state_dict().values() if isinstance(t, torch.Tensor))]
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class _State:
    """Progress of one :func:`run_autoattack` call, on the CPU: the flags after each finished
    sub-attack, the adversarial examples found so far and the warnings each sub-attack raised.
    ``finish`` saves it (examples first, then the JSON, each atomically), so the JSON never claims
    a sub-attack whose examples are missing."""

    def __init__(self, path: Path | None, fingerprint: str, attacks: list[str], clean: torch.Tensor, x: torch.Tensor):
        self.path, self.fingerprint, self.attacks = (Path(path) if path else None), fingerprint, attacks
        self.clean, self.robust = clean, clean.clone()  # (N,) bool: correct on x / still robust
        self.x_adv = x.detach().cpu().clone()
        self.robust_after: dict[str, torch.Tensor] = {}
        self.warnings: dict[str, list[str]] = {}
        self.resumed: list[str] = []

    @property
    def done(self) -> list[str]:
        return list(self.robust_after)

    @classmethod
    def open(cls, path, fingerprint, attacks, clean, x) -> "_State":
        state = cls(path, fingerprint, attacks, clean, x)
        if state.path is not None and state.path.is_file():
            state._restore()
        return state

    def _adv_path(self) -> Path:
        return self.path.with_name(self.path.name.removesuffix(".json").removesuffix(".state") + ".adv.safetensors")

    def _restore(self) -> None:
        """Load the saved progress if it is this call's; a damaged pair (either file unreadable, truncated or
        not matching its sha256) is set aside as ``*.corrupt-<time>`` and the sub-attacks run from the start."""
        try:
            saved = read_sealed_json(self.path)
            tensors, meta = load_sealed_tensors(self._adv_path())
            x_adv = tensors["x_adv"]
        except (DamagedFile, KeyError) as err:
            moved = [set_aside(p).name for p in (self.path, self._adv_path()) if p.exists()]
            logging.getLogger(LOGGER).warning("AutoAttack state %s is damaged (%s); moved to %s, starting over", self.path,
                                              getattr(err, "reason", err), " and ".join(moved))
            return
        done = saved.get("done", [])
        if (saved.get("format") != STATE_FORMAT or saved.get("fingerprint") != self.fingerprint
                or saved.get("attacks") != self.attacks or meta.get("fingerprint") != self.fingerprint
                or int(meta.get("done", -1)) < len(done) or x_adv.shape != self.x_adv.shape):
            logging.getLogger(LOGGER).warning("ignoring AutoAttack state %s: it belongs to another run; starting over", self.path)
            return
        for attack in done:
            self.robust_after[attack] = torch.tensor([c == "1" for c in saved["robust_after"][attack]], dtype=torch.bool)
            self.warnings[attack] = list(saved["warnings"].get(attack, []))
            for message in self.warnings[attack]:  # so that capture_warnings sees them as in the first run
                logging.getLogger(AA_LOGGER).warning(message)
        if done:
            self.robust, self.x_adv, self.resumed = self.robust_after[done[-1]].clone(), x_adv, list(done)

    def finish(self, attack: str, warnings: list[str]) -> None:
        self.robust_after[attack], self.warnings[attack] = self.robust.clone(), list(warnings)
        if self.path is None:
            return
        meta = {"fingerprint": self.fingerprint, "done": str(len(self.robust_after))}
        atomic_save_sealed_tensors(self._adv_path(), {"x_adv": self.x_adv.contiguous()}, metadata=meta)
        atomic_write_sealed_json(self.path, {
            "format": STATE_FORMAT, "fingerprint": self.fingerprint, "attacks": self.attacks, "done": self.done,
            "robust_after": {a: "".join("1" if b else "0" for b in f.tolist()) for a, f in self.robust_after.items()},
            "warnings": self.warnings})

    def accuracies(self) -> dict[str, float]:
        """pyautoattack's robust_accuracy_dict: 'clean' and each finished sub-attack, fractions of N."""
        n = max(self.clean.numel(), 1)
        return {"clean": self.clean.sum().item() / n, **{a: f.sum().item() / n for a, f in self.robust_after.items()}}


def _check_args(norm, version, attacks, batch_size, n_iter, n_queries) -> None:
    check_choice(norm, "attack.norm", AA_NORMS)
    check_choice(version, "attack.version", AA_VERSIONS)
    if version == "custom":
        if not attacks:
            raise ConfigError("attack.version=custom needs attack.attacks, a list such as [apgd-ce,square]")
        for name in attacks:
            check_choice(name, "attack.attacks[]", AA_ATTACKS)
    check_min(batch_size, "attack.batch_size", 1)
    if n_iter is not None:
        check_min(n_iter, "attack.n_iter", 1)
    if n_queries is not None:
        check_min(n_queries, "attack.n_queries", 1)


# the attacks each version runs (pyautoattack's AutoAttack.__init__); the targeted / DLR ones need >= 4 classes
VERSION_ATTACKS = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
                   "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"), "rand": ("apgd-ce", "apgd-dlr")}


def check_classes(version: str, attacks, n_classes: int, where: str) -> None:
    """ConfigError before any work when the attacks AutoAttack would run need more classes than the data has."""
    run = VERSION_ATTACKS.get(str(version), tuple(attacks or ()))
    targeted = {"apgd-t", "apgd-dlr"} & set(run)
    if targeted and int(n_classes) < 4:
        raise ConfigError(f"{where}: AutoAttack's {', '.join(sorted(targeted))} need >= 4 classes, the data has {n_classes}; "
                          f"use {where}.version=custom {where}.attacks=[apgd-ce,square]")


def _configure(adversary, model: nn.Module, x: torch.Tensor, n_iter: int | None, n_queries: int | None) -> None:
    """Fit the targeted attacks to the number of classes and apply iteration overrides."""
    with torch.no_grad():
        n_classes = int(model(x[:1]).shape[1])
    targeted = {"apgd-t", "apgd-dlr"} & set(adversary.attacks_to_run)
    if targeted and n_classes < 4:  # DLR needs the 3rd largest logit, targeted DLR the 4th
        raise ConfigError(f"AutoAttack's {', '.join(sorted(targeted))} need >= 4 classes, the model has {n_classes}; "
                          "use attack.version=custom attack.attacks=[apgd-ce,square]")
    # pyautoattack assumes 10+ classes (9 target classes); check_n_classes would otherwise warn and
    # the targeted attacks would index past the logits
    adversary.apgd_targeted.n_target_classes = min(adversary.apgd_targeted.n_target_classes, n_classes - 1)
    adversary.fab.n_target_classes = min(adversary.fab.n_target_classes, n_classes - 1)
    if n_iter is not None:
        for apgd in (adversary.apgd, adversary.apgd_targeted):
            _set_apgd_iterations(apgd, n_iter)
        adversary.fab.n_iter = n_iter
    if n_queries is not None:
        adversary.square.n_queries = n_queries


def _set_apgd_iterations(apgd, n_iter: int) -> None:
    """APGD derives its step-size checkpoints from n_iter in __init__; recompute them the same way."""
    apgd.n_iter = apgd.n_iter_orig = n_iter
    apgd.n_iter_2 = max(int(0.22 * n_iter), 1)
    apgd.n_iter_min = max(int(0.06 * n_iter), 1)
    apgd.size_decr = max(int(0.03 * n_iter), 1)


@contextmanager
def _forked_rng(device: torch.device) -> Iterator[None]:
    """pyautoattack calls torch.manual_seed(seed) inside; keep the caller's RNG stream untouched."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


class _Forward(logging.Handler):
    """Re-emits pyautoattack's records on robprune's logger (respecting that logger's level)."""

    def __init__(self, target: logging.Logger):
        super().__init__(logging.DEBUG)
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        if self.target.isEnabledFor(record.levelno):
            record.name = self.target.name
            self.target.handle(record)


class _Collect(logging.Handler):
    def __init__(self, messages: list[str]):
        super().__init__(logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.messages:  # the same check fires once per batch: keep it once
            self.messages.append(message)


@contextmanager
def _attached(handler: logging.Handler) -> Iterator[None]:
    """Attach ``handler`` to pyautoattack's logger; DEBUG level and no propagation while attached
    (its records reach the root logger only through robprune's logger), restored afterwards."""
    aa = logging.getLogger(AA_LOGGER)
    level, propagate = aa.level, aa.propagate
    aa.addHandler(handler)
    aa.setLevel(logging.DEBUG)
    aa.propagate = False
    try:
        yield
    finally:
        aa.removeHandler(handler)
        aa.setLevel(level)  # contexts nest LIFO, so restoring what each saw restores the original
        aa.propagate = propagate


@contextmanager
def routed_logs() -> Iterator[None]:
    """While active, pyautoattack's log records appear on the ``robprune.attacks.autoattack`` logger."""
    with _attached(_Forward(logging.getLogger(LOGGER))):
        yield


@contextmanager
def capture_warnings() -> Iterator[list[str]]:
    """Collect pyautoattack's check warnings (unique messages, in order) raised inside the block."""
    messages: list[str] = []
    with _attached(_Collect(messages)):
        yield messages
