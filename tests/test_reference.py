"""The docs site's configuration reference (robprune.reference) is rendered from conf/ and robprune/schema.py:
it names every option file of every group, and carries the schema's types and ranges."""
from robprune.config import config_dir
from robprune.reference import comments, groups, render_reference, spec_for, describe


def test_reference_names_every_option_of_every_group():
    page = render_reference()
    found = groups()
    assert {"prune", "train", "finetune", "eval", "attack", "dataset", "model", "experiment", "eval/corruptions"} <= set(found)
    for group, files in found.items():
        assert f"\n## {group}\n" in page, group
        for path in files:
            assert f"### `{group}={path.stem}`" in page, (group, path.stem)
            assert f"`conf/{group}/{path.name}`" in page


def test_reference_rows_carry_schema_ranges_and_comments():
    page = render_reference()
    rows = page.split("### `prune=l1_filter`")[1].split("###")[0]
    assert "| `sparsity` |" in rows and "float in [0, 1) or null" in rows
    assert "| `allocation` | `uniform` | one of: `uniform`, `global`, `mrs` |" in rows
    mrs = page.split("### `prune=mrs`")[1].split("###")[0]
    assert "| `lam` | `0.4` | float ≥ 0 |" in mrs
    assert "| `scores.alpha` | `0.2` | float > 0 |" in mrs
    assert "| `scores.attack.steps` | `10` | int ≥ 1 |" in mrs  # through the defaults list: /attack@scores.attack: pgd
    pgd = page.split("### `attack=pgd`")[1].split("###")[0]
    assert "one of: `linf`, `l2`" in pgd


def test_spec_lookup_follows_targets_and_nested_nodes():
    conf = config_dir()
    assert describe(spec_for("prune", "l1_filter", "sparsity", {"_target_": "robprune.prune.l1_filter"}, conf)) == "float in [0, 1) or null"
    assert describe(spec_for("train", "pgd_at", "objective.adv_ratio",
                             {"objective": {"_target_": "robprune.train.objectives.pgd_at"}}, conf)) == "float in (0, 1]"
    assert describe(spec_for("eval", "default", "n_examples.autoattack", {}, conf)) == "int ≥ 1 or null"
    assert spec_for("experiment", "mrpf_mnist", "prune.sparsity", {}, conf) is None


def test_trailing_comments_follow_nesting():
    header, trailing = comments("# what it is\n# second line\na: 1  # top\nb:\n  c: x   # nested\n  d: '#no'  # quoted hash\n")
    assert header == "what it is second line"
    assert trailing == {"a": "top", "b.c": "nested", "b.d": "quoted hash"}


def test_a_nested_option_group_lists_its_leaves_with_the_groups_help_once():
    """counter_fitting (a text attack's nested option, declared by CounterFitting): each of its seven leaves
    is a row with its range, and the group's help is shown once, on its first leaf."""
    page = render_reference()
    fooler = page.split("### `attack=textfooler`")[1].split("###")[0]
    rows = [line for line in fooler.splitlines() if line.startswith("| `counter_fitting.")]
    assert [row.split("`")[1] for row in rows] == [f"counter_fitting.{k}" for k in
                                                    ("k1", "k2", "k3", "delta", "gamma", "rho", "steps")]
    assert "| `counter_fitting.rho` | `0.2` | float in [0, 0.5] |" in fooler
    assert "hyperparameters of counter-fitting" in rows[0] and all("hyperparameters" not in r for r in rows[1:])
