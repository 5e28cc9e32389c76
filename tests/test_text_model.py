"""Text as a modality of the one pipeline: the tokenised bundle, dynamic-padding loader, the
TextClassifier (checkpoint round trip, cost), FreeLB, the offline MiniLM default and the errors."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from robprune.checkpoint import load_checkpoint, save_checkpoint
from robprune.compose import compose
from robprune.data import build_data
from robprune.errors import ConfigError, DataError
from robprune.measure import count_macs, dense_model
from robprune.stages.common import architecture
from robprune.train.objectives import freelb
from robprune.validate import validate
from tests.data_fixtures import dataset_cfg
from tests.text_fixtures import tiny_bert, write_sst2, write_tsv


@pytest.fixture(scope="module")
def text_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    data = write_sst2(root / "sst2", n_train=120, n_dev=40)
    return {"data": data, "bert": tiny_bert(root / "bert", data / "train.tsv"), "cache": root / "cache"}


def _bundle(env, **overrides):
    cfg = dataset_cfg("sst2", env["data"], tokenizer=str(env["bert"]), **overrides)
    return build_data(cfg, cache_dir=env["cache"])


def _model(env, data):
    cfg = OmegaConf.create({"_target_": "robprune.models.text_classifier", "pretrained": str(env["bert"])})
    return dense_model(architecture(cfg, data))


def test_bundle_tokenises_once_and_pads_per_batch(text_env):
    data = _bundle(text_env)
    assert data.modality == "text" and len(data.train_text) == 120 and data.test_x.shape[0] == 40
    assert data.train_x.dtype == torch.int32 and data.train_x.shape[1] <= data.max_length
    lengths = (data.train_x != data.pad_id).sum(1)
    assert data.train_x.shape[1] == int(lengths.max())            # padded to the split's longest, not max_length
    again = _bundle(text_env)                                      # from the token cache: identical
    assert torch.equal(again.train_x, data.train_x)
    batches = list(data.loader(data.train_x, data.train_y, 16, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert sum(len(y) for _, y in batches) == 120
    for ids, _ in batches:                                         # dynamic padding: each batch to its own longest
        assert ids.dtype == torch.int64 and int((ids != data.pad_id).sum(1).max()) == ids.shape[1]
    order = [y for _, y in data.loader(data.train_x, data.train_y, 16, shuffle=True, generator=torch.Generator().manual_seed(0))]
    assert all(torch.equal(a, b) for a, b in zip(order, [y for _, y in batches]))


def test_max_length_truncates_and_slices_like_images(text_env):
    data = _bundle(text_env, max_length=4, train_split="train[:50%]", test_split="validation[10:20]")
    assert data.train_x.shape == (60, 4) and data.test_x.shape == (10, 4)
    assert data.test_text == _bundle(text_env).test_text[10:20]   # 'validation' is dev


def test_text_classifier_checkpoint_round_trip_is_bit_identical(text_env, tmp_path):
    data = _bundle(text_env)
    model = _model(text_env, data)
    ids = data.test_x[:8].long()
    save_checkpoint(model, tmp_path, arch=architecture(OmegaConf.create(
        {"_target_": "robprune.models.text_classifier", "pretrained": str(text_env["bert"])}), data))
    loaded, meta = load_checkpoint(tmp_path)
    assert meta["arch"]["hf_config"]["num_hidden_layers"] == 2 and meta["arch"]["pad_id"] == data.pad_id
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    model.eval()
    assert torch.equal(model(ids), loaded(ids))


def test_macs_count_linear_layers_and_attention(text_env):
    data = _bundle(text_env)
    model = _model(text_env, data)
    ids = data.example_inputs(1)
    cfg = model.hf.config
    h, length = cfg.hidden_size, ids.shape[1]
    per_layer = length * (4 * h * h + 2 * h * cfg.intermediate_size) + 2 * length * length * h
    head = h * h + h * 2                                            # pooler + classifier on [CLS]
    assert count_macs(model, ids) == cfg.num_hidden_layers * per_layer + head


def test_freelb_is_a_loss_and_trains(text_env):
    data = _bundle(text_env)
    model = _model(text_env, data).train()
    objective = freelb(adv_steps=2, adv_lr=0.1, init_mag=0.05, max_norm=1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.manual_seed(0)
    losses = []
    for _ in range(3):
        for ids, y in data.loader(data.train_x, data.train_y, 40, shuffle=False):
            opt.zero_grad()
            loss = objective(model, ids, y)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    with pytest.raises(ConfigError, match="adv_steps"):
        freelb(adv_steps=0)


def test_offline_minilm_default_loads_without_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from robprune.models.text import resolve_pretrained, text_classifier

    folder = resolve_pretrained("minilm-l6")
    model = text_classifier(num_classes=2, pad_id=0, vocab_size=30522, pretrained="minilm-l6")
    assert model.hf.config.num_hidden_layers == 6 and model.hf.config.hidden_size == 384
    assert folder.endswith("model")
    with pytest.raises(ConfigError, match="not a local folder.*HF_HUB_OFFLINE"):
        text_classifier(num_classes=2, pad_id=0, vocab_size=10, pretrained="no-such-org/no-such-model")


def test_bad_text_inputs_are_one_line_errors(text_env, tmp_path):
    with pytest.raises(ConfigError, match="dataset.max_length"):
        _bundle(text_env, max_length=1)
    with pytest.raises(ConfigError, match="empty slice"):                     # an empty sentence list
        _bundle(text_env, test_split="dev[40:]")
    empty = tmp_path / "nofiles"
    (empty / "bert").mkdir(parents=True)
    (empty / "bert" / "config.json").write_text((text_env["bert"] / "config.json").read_text())
    with pytest.raises(ConfigError, match="no model.safetensors"):
        from robprune.models.text import text_classifier
        text_classifier(num_classes=2, pad_id=0, vocab_size=10, pretrained=str(empty / "bert"))
    data = _bundle(text_env)
    with pytest.raises(ConfigError, match="does not belong to this model"):   # MiniLM's vocabulary on the tiny BERT
        from robprune.models.text import text_classifier
        text_classifier(num_classes=2, pad_id=0, vocab_size=30522, pretrained=str(text_env["bert"]))
    bad = tmp_path / "bad"
    write_tsv(bad / "train.tsv", [(0, "a b")], header=("polarity", "sentence"))
    write_tsv(bad / "dev.tsv", [(0, "a b")])
    with pytest.raises(DataError, match="train.tsv"):
        build_data(dataset_cfg("sst2", bad, tokenizer=str(text_env["bert"])), cache_dir=None)
    assert data.num_classes == 2


@pytest.mark.parametrize("override, match", [
    (["model=cnn8"], "does not take text inputs"),
    (["eval=default"], "is an image attack"),
    (["prune=l1_filter"], "prunes image models"),
    (["train=pgd_at"], "does not apply to dataset=sst2"),
])
def test_modality_mismatches_fail_before_work(text_env, override, match):
    cfg = compose(["+experiment=text_sst2", f"data.root={text_env['data']}", *override])
    with pytest.raises(ConfigError, match=match):
        validate(cfg)


def test_text_attack_on_images_is_refused():
    with pytest.raises(ConfigError, match="is a text attack"):
        validate(compose(["eval=text"]))
    with pytest.raises(ConfigError, match="does not apply"):
        validate(compose(["train=freelb"]))


def test_a_max_length_beyond_the_models_positions_is_one_line_before_any_stage(text_env, tmp_path):
    """dataset.max_length longer than the encoder's position embeddings (IMDB's 256 on a 128-position
    BERT) is refused before any stage, naming the key and the limit, instead of an index error deep in
    the encoder; the run directory gets no result."""
    from robprune.pipeline import run

    base = ["+experiment=text_sst2", f"data.root={text_env['data']}", f"model.pretrained={text_env['bert']}", "dataset.train_split=train",
            f"dataset.tokenizer={text_env['bert']}", f"cache_dir={tmp_path / 'cache'}"]
    data = _bundle(text_env, max_length=200)
    with pytest.raises(ConfigError, match=r"dataset\.max_length=200 is longer than the model's 128 position embeddings"):
        data.check_model(_model(text_env, data))
    cfg = compose([*base, "dataset.max_length=200"])
    with pytest.raises(ConfigError, match="dataset.max_length=128 or lower"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["datasets"]  # the decoded sentences only, no stage
    data = _bundle(text_env, max_length=128)
    data.check_model(_model(text_env, data))  # exactly the model's positions is fine
