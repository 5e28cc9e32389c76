"""The damage check (docs/methods/mrpf.md#step-8): each prunable layer pruned alone, its Δ L_adv ranked against
MRS, L1 and Taylor, with the stability of MRS over calibration seeds, on a small trained model."""
import json
import math

import pytest
import torch

from robprune.checkpoint import load_checkpoint
from robprune.compose import compose
from robprune.pipeline import run
from robprune.prune.channel.damage import spearman
from robprune.prune.channel.scores import compute_scores
from tests.helpers import SHRINK

SCORES = ["prune=mrs", "prune.scores.n_images=64", "prune.scores.steps=2", "train_seed=0"]


@pytest.fixture(scope="module")
def mrs_run(tmp_path_factory):
    """One shrunk prune=mrs pipeline run on the embedded digits data (damage check on by default)."""
    tmp = tmp_path_factory.mktemp("damage")
    cfg = compose([*SHRINK, f"cache_dir={tmp / 'cache'}", *SCORES])
    metrics = run(cfg, tmp / "run", choices={})
    return cfg, metrics, tmp


def test_damage_block_ranks_every_layer_against_mrs_l1_and_taylor(mrs_run):
    _, _, tmp = mrs_run
    record = json.loads((tmp / "run" / "scores.json").read_text())
    block = record["damage"]
    order = [r["name"] for r in record["layers"]]
    rows = [r["name"] for r in block["layers"]]
    assert rows == sorted((g["root"] for g in record["groups"]), key=order.index)  # one row per layer, module order
    assert len(block["layers"]) == 4  # small_cnn: 3 convs + the hidden Linear (the classifier is never cut)
    for row in block["layers"]:
        assert set(row) == {"name", "members", "mrs", "damage", "l1", "taylor"}
        assert row["mrs"] >= 0 and row["l1"] > 0 and row["taylor"] >= 0 and math.isfinite(row["damage"])
    assert set(block["spearman"]) == {"mrs", "l1", "taylor"}
    assert all(-1 <= v <= 1 for v in block["spearman"].values()), block["spearman"]
    stability = block["stability"]
    assert stability["seeds"] == [0, 1, 2] and len(stability["spearman_mrs_damage"]) == 3
    assert stability["spearman_mrs_damage"][0] == block["spearman"]["mrs"]  # seed 0 = the main calibration set
    assert -1 <= stability["mrs_rank_agreement"] <= 1 and stability["std"] >= 0
    assert record["seconds_damage"] == block["seconds"]["total"] > 0 and record["seconds_mrs"] > 0


def test_damage_files_are_published(mrs_run):
    _, _, tmp = mrs_run
    assert (tmp / "run" / "damage.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Damage check" in (tmp / "run" / "scores.md").read_text()


def test_damage_check_off_leaves_the_block_out_and_the_model_untouched(mrs_run, tmp_path):
    cfg, _, tmp = mrs_run
    from robprune.data import build_data

    data = build_data(cfg.dataset)
    model, _ = load_checkpoint(next(p.parent for p in (tmp / "cache" / "train").glob("*/model.safetensors")))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    scores_cfg = compose([*SHRINK, *SCORES, "prune.scores.damage_check=false"]).prune.scores
    record = compute_scores(model, scores_cfg, data.train_x, data.train_y, device=torch.device("cpu"),
                            example_inputs=torch.zeros(1, 1, 8, 8), out_dir=tmp_path)
    assert "damage" not in record and "seconds_damage" not in record and not (tmp_path / "damage.png").exists()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_spearman_is_none_when_undefined():
    assert spearman([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None and spearman([1.0], [2.0]) is None
