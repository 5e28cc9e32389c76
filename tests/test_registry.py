"""The registry contract: one name per thing, and it is the conf file's stem and the name in results.

Parametrised over the registries themselves, so a new registration (or a new conf file) is checked
without editing this file."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from robprune.config import config_dir
from robprune.errors import ConfigError
from robprune.registry import REGISTRIES, Registry, locate

GROUPED = [r for r in REGISTRIES.values() if r.group is not None]


def conf_stems(group: str) -> set[str]:
    return {p.stem for p in (config_dir() / group).glob("*.yaml")}


@pytest.mark.parametrize("registry", list(REGISTRIES.values()), ids=lambda r: r.kind)
def test_every_registry_has_entries_and_snake_case_names(registry):
    names = registry.names()
    assert names, f"nothing registered as a {registry.kind}"
    assert all(n == n.lower() and n.replace("_", "").isalnum() for n in names)


@pytest.mark.parametrize("registry", GROUPED, ids=lambda r: r.group)
def test_registered_names_are_the_conf_stems(registry):
    """conf/<group>/<name>.yaml exists for every registered name, and every file is registered."""
    assert set(registry.names()) == conf_stems(registry.group)


@pytest.mark.parametrize("group,name", [(r.group, n) for r in GROUPED for n in r.names()])
def test_a_conf_file_builds_what_is_registered_under_its_stem(group, name):
    registry = next(r for r in GROUPED if r.group == group)
    node = OmegaConf.load(config_dir() / group / f"{name}.yaml")
    if "_target_" in node:
        assert locate(str(node._target_)) is registry.get(name), f"conf/{group}/{name}.yaml builds another {registry.kind}"


def test_an_unknown_name_is_one_line_naming_the_nearest_and_all():
    registry = Registry("widget", group="widget")
    registry.add("alpha_one", object())
    registry.add("beta", object())
    with pytest.raises(ConfigError) as err:
        registry.get("alpha_on")
    message = str(err.value)
    assert "\n" not in message and "did you mean alpha_one?" in message and "alpha_one, beta" in message


def test_a_name_is_registered_once_and_in_snake_case():
    registry = Registry("widget")
    thing = object()
    registry.add("one", thing)
    registry.add("one", thing)  # the same object again (a module imported twice) is harmless
    with pytest.raises(ValueError, match="registered twice"):
        registry.add("one", object())
    with pytest.raises(ValueError, match="lower_snake_case"):
        registry.add("Two", object())


def test_names_filter_on_metadata_including_several_values():
    registry = Registry("widget")
    registry.add("a", 1, modality="image")
    registry.add("b", 2, modality="text")
    registry.add("c", 3, modality=("image", "text"))
    assert registry.names(modality="text") == ("b", "c")
    assert registry.names(modality="image") == ("a", "c")
    assert registry.name_of(3) == "c" and registry.find(4) is None


def test_a_criterion_is_checked_against_the_criteria_registry_before_any_work():
    """prune.criterion names a registered criterion (a new one in its own module is accepted); a misspelt
    one is one line naming the registered ones, and a criterion that reads the calibration set without a
    scores node says so — both at validation, from the registrations."""
    from robprune.compose import compose
    from robprune.registry import CRITERIA
    from robprune.validate import validate

    validate(compose(["prune=l2_filter", "prune.criterion=random"]))
    with pytest.raises(ConfigError) as err:
        validate(compose(["prune=l2_filter", "prune.criterion=l22"]))
    assert "prune.criterion='l22' is not a registered channel importance criterion (did you mean l2?)" in str(err.value)
    assert all(name in str(err.value) for name in CRITERIA.names())
    needs = [n for n in CRITERIA.names() if CRITERIA.entry(n).meta.get("needs_scores")]
    assert needs == ["taylor"]
    with pytest.raises(ConfigError, match="prune.criterion=taylor needs a scores node"):
        validate(compose(["prune=l2_filter", "prune.criterion=taylor"]))


def test_a_declared_node_refuses_a_key_it_does_not_declare():
    from robprune.train.sharpness import check_node
    from robprune.train.trainer import DEFAULTS, TrainerOptions

    with pytest.raises(ConfigError, match=r"train\.sharpness\.rhoo is not a key of train\.sharpness"):
        check_node({"method": "sam", "rhoo": 0.1}, "train.sharpness")
    assert DEFAULTS == {f: getattr(TrainerOptions(), f) for f in TrainerOptions.__dataclass_fields__}
