"""The configuration space, fuzzed (issue 27 items 1 and 2): never a traceback, never exit 1.

- Every experiment takes every option of prune, finetune, train and eval: it is accepted (an experiment's keys
  for an option the command line swapped out are dropped or reset, each with a note: robprune.compose.fit_experiment)
  or refused in one line. The suite composes a covering sample (every experiment, every option, each at least
  once); ``--fuzz-long`` composes the whole product.
- Hypothesis draws an experiment or none, options per group, and values for the declared options, valid ones and
  invalid ones generated from the declarations (wrong kinds, past a bound, unknown choices, null where a value is
  required, interpolations to missing keys, unknown keys, deleted keys); every outcome is accepted or one
  user-error line, and a value the declaration refuses is always refused. Seeded (derandomize), a fixed example
  budget in the suite, 10,000 examples with ``--fuzz-long``; the counts go to the terminal and to
  ``outputs/fuzz/config_space.json``.
"""
from __future__ import annotations

import collections
import json
import os

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.config_space import (METHOD_GROUPS, declared_leaves, experiments, invalid_values, one_line, options, outcome,
                                render, valid_values)
from tests.helpers import REPO, robprune

GROUPS_DRAWN = ("dataset", "model", "train", "prune", "finetune", "eval", "quant", "logger", "compress")
ADDED = ("compress",)  # groups the root config does not list: added with +group=option


def _modality_note(message: str) -> bool:
    """A refusal that names what fits: 'use prune=...', 'pick ...', 'e.g. ...', 'pass ...', 'set ...'."""
    return any(word in message for word in ("use ", "pick ", "e.g. ", "pass ", "set ", "remove ", "did you mean"))


def covering_sample() -> list[tuple[str, str, str]]:
    """(experiment, group, option) so that every experiment meets every group of METHOD_GROUPS and every option
    of those groups meets an experiment; deterministic."""
    exps = experiments()
    cases, i = [], 0
    for group in METHOD_GROUPS:
        for option in options(group):
            cases.append((exps[i % len(exps)], group, option))
            i += 1
    return cases


def whole_product() -> list[tuple[str, str, str]]:
    return [(e, g, o) for e in experiments() for g in METHOD_GROUPS for o in options(g)]


def _check_swap(experiment: str, group: str, option: str) -> None:
    result = outcome([f"+experiment={experiment}", f"{group}={option}", "data.download=false"])
    if result.accepted or result.needs_data:
        assert all(one_line(f"ConfigError: {n}") and experiment in n for n in result.notes), result.notes
    else:
        assert one_line(result.message) and _modality_note(result.message), result.message


@pytest.mark.parametrize("experiment,group,option", [pytest.param(*c, id="-".join(c)) for c in covering_sample()])
def test_every_experiment_takes_every_option(experiment, group, option):
    _check_swap(experiment, group, option)


def test_the_whole_product_long(request):
    """Every experiment × every option of prune, finetune, train and eval (880 compositions, ~4 min): --fuzz-long."""
    if not request.config.getoption("--fuzz-long"):
        pytest.skip("the whole product is --fuzz-long (the suite composes a covering sample)")
    counts = collections.Counter()
    for experiment, group, option in whole_product():
        result = outcome([f"+experiment={experiment}", f"{group}={option}", "data.download=false"])
        counts["accepted" if result.accepted or result.needs_data else "refused"] += 1
        counts["with notes"] += bool(result.notes)
        _check_swap(experiment, group, option)
    _report("whole_product", counts)


def test_swapping_the_method_of_an_experiment_keeps_its_budget_and_drops_what_does_not_apply():
    # the issue's report: adasap_cifar10's per-method maps knew only its own methods (an omegaconf traceback, exit 1)
    from robprune.compose import compose, fit_experiment

    overrides = ["+experiment=adasap_cifar10", "prune=mrs"]
    cfg = compose(overrides)
    assert fit_experiment(cfg, overrides) == [] and cfg.finetune.epochs == 60 and cfg.finetune.sharpness.method == "none"
    overrides = ["+experiment=mrpf_cifar10_cpu", "finetune=pgd_at", "data.root=."]
    cfg = compose(overrides)
    notes = fit_experiment(cfg, overrides)
    assert "beta" not in cfg.finetune.objective and cfg.finetune.epochs == 2 and cfg.finetune.objective.attack.steps == 5
    assert notes == ["finetune.objective.beta (set by experiment mrpf_cifar10_cpu) dropped: finetune=pgd_at does not take it"]
    overrides = ["+experiment=adasap_mnist", "finetune=none", "data.root=."]
    cfg = compose(overrides)
    assert fit_experiment(cfg, overrides)[0].startswith("finetune.epochs (set by experiment adasap_mnist) reset to 0")
    assert cfg.finetune.epochs == 0
    # a key the user sets is never dropped: its error stands
    overrides = ["+experiment=mrpf_cifar10_cpu", "finetune=pgd_at", "finetune.objective.beta=6.0", "data.root=."]
    result = outcome(overrides)
    assert not result.accepted and result.message.startswith("ConfigError: finetune.objective.beta is not a key")


def test_swapped_method_through_the_cli_is_one_line_exit_2(tmp_path):
    # before: a 74-line omegaconf traceback and exit 1; now the experiment composes, and the missing data is one line
    proc = robprune(["run", "+experiment=adasap_cifar10", "prune=mrs", "data.download=false",
                     f"data.root={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "dataset.root=" in proc.stderr and "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ Hypothesis

@st.composite
def configs(draw):
    """(overrides, invalid): an experiment or none, 0-2 group swaps (one in ten naming no option), 0-3 mutations
    of declared leaves; invalid says whether a swap names no option or a mutation is refused by its declaration
    (then the whole config must be refused)."""
    exps = experiments()
    base = []
    experiment = draw(st.sampled_from([None, *exps]))
    if experiment:
        base.append(f"+experiment={experiment}")
    wrong_option = False
    for group in draw(st.lists(st.sampled_from(GROUPS_DRAWN), max_size=2, unique=True)):
        plus = draw(st.sampled_from(["+", ""])) if group in ADDED else ""  # +compress= adds it; an experiment may have it
        option = draw(st.sampled_from(options(group)))
        if draw(st.integers(0, 9)) == 0:  # one swap in ten names no option: a number, a fraction, a misspelt name
            option, wrong_option = draw(st.sampled_from(["3", "0.5", "no_such_option"])), True
        base.append(f"{plus}{group}={option}")
    base += ["data.download=false", f"data.root={REPO}"]  # a folder that exists: the data itself is item 3's business
    leaves = declared_leaves(tuple(base))
    mutations, invalid = [], False
    for _ in range(draw(st.integers(0, 3)) if leaves else 0):
        key, spec = draw(st.sampled_from(leaves))
        if any(m.lstrip("+~").split("=", 1)[0].startswith(key.rsplit(".", 1)[0]) for m in mutations):
            continue  # one mutation per node: Hydra refuses a second '+' of the same key (its own one line)
        kind = draw(st.sampled_from(["valid"] * 3 + ["invalid", "missing_interpolation", "unknown_key", "delete"]))
        if kind == "valid" and valid_values(spec):
            mutations.append(f"{key}={render(draw(st.sampled_from(valid_values(spec))))}")
        elif kind == "invalid" and invalid_values(spec):
            mutations.append(f"{key}={render(draw(st.sampled_from(invalid_values(spec))))}")
            invalid = True
        elif kind == "missing_interpolation":
            mutations.append(f"{key}=${{no_such.key}}")
            invalid = True
        elif kind == "unknown_key":
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            mutations.append(f"+{parent + '.' if parent else ''}no_such_option=1")
        elif kind == "delete":
            mutations.append(f"~{key}")
    return base + mutations, invalid or wrong_option


def _budget(request) -> int:
    return 10_000 if request.config.getoption("--fuzz-long") else int(os.environ.get("ROBPRUNE_FUZZ_EXAMPLES", 40))


COUNTS: collections.Counter = collections.Counter()


def _report(name: str, counts: collections.Counter) -> None:
    out = REPO / "outputs" / "fuzz"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"config_space_{name}.json").write_text(json.dumps(dict(counts), indent=2, sort_keys=True))
    print(f"\nconfig space ({name}): " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


def test_fuzzed_configs_are_accepted_or_refused_in_one_line(request):
    @settings(max_examples=_budget(request), derandomize=True, deadline=None, database=None,
              phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))  # no shrinking:
    # a drawn config is small already, and shrinking one costs minutes of compositions
    @given(configs())
    def check(drawn):
        overrides, invalid = drawn
        result = outcome(overrides)
        COUNTS["examples"] += 1
        COUNTS["accepted" if result.accepted else "refused (data root)" if result.needs_data else "refused"] += 1
        COUNTS["invalid drawn"] += invalid
        if not result.accepted:
            assert one_line(result.message), (overrides, result.message)
        if invalid:  # a value its declaration refuses is never run (a missing data root may be what is said first)
            assert not result.accepted, overrides

    check()
    _report("hypothesis", COUNTS)
    assert COUNTS["refused"] + COUNTS["refused (data root)"] > 0 and COUNTS["accepted"] + COUNTS["refused (data root)"] > 0


# Every failure Hypothesis found, fixed, kept as a regression example (the overrides and the line it must give).
REGRESSIONS = [
    # a group option given as a number: Hydra's plain ValueError ('Config group override must be a string or a list')
    (["eval=3"], "eval=3 is not an option of eval; pick one of: "),
    (["+experiment=mrpf_mnist", "prune=0.5"], "prune=0.5 is not an option of prune; pick one of: "),
    # an interpolation to a missing key in a value the modality check reads before the walk: omegaconf's traceback
    (["dataset.name=${no_such.key}"], "dataset.name: cannot resolve its value"),
    (["train.epochs=${no_such.key}"], "train.epochs: cannot resolve its value"),
    # a dataset name that is no dataset: refused as 'dataset.channels is not a key of dataset (remove it)'
    (["dataset.name=x"], "dataset.name=x is not a dataset robprune knows"),
    # a wrong kind in a value the modality check reads before the walk: int('abc'), a ValueError traceback
    (["model=resnet18", "dataset=cifar10", "data.root=.", "train.epochs=abc"], "train.epochs must be an integer"),
    # '+group=' for a group the experiment already picks: Hydra's 'override compress: ...' hint, written for YAML files
    (["+experiment=adverfine_fmnist", "+compress=none"], "pick its option without the '+': compress=none"),
    # a study's knob that only an unused option reads: accepted, and the run would have died writing config.yaml
    # at its end (found while reviewing: outcome() now resolves every accepted config whole)
    (["+experiment=adverfine_mnist", "adverfine.bits=${no_such.key}", "data.root=."], "adverfine.bits: cannot resolve"),
    # '+key=' for a key that exists: Hydra's 'Could not append to config' without the fix
    (["+experiment=mrpf_cifar10_cpu", "+finetune.objective.beta=3.0"], "set it without the '+': finetune.objective.beta=3.0"),
]


@pytest.mark.parametrize("overrides,expected", REGRESSIONS)
def test_regression_examples(overrides, expected):
    result = outcome(overrides)
    assert not result.accepted and one_line(result.message) and expected in result.message, result.message
