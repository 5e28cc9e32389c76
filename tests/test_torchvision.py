"""model=torchvision and model.init=pretrained's published weights (timm and torchvision), offline: a real
weights file of the architecture is put where the package's cache keeps it (torch.hub's checkpoint folder
under TORCH_HOME, the Hugging Face hub cache), and robprune.start must find it, load it into the wrapped
network and put the weights' normalisation into the Normalize layer. Nothing is downloaded."""
import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from robprune.compose import compose
from robprune.errors import ConfigError
from robprune.measure import dense_model
from robprune.start import file_digest, load_start

torchvision = pytest.importorskip("torchvision")

SIZE, CLASSES = 32, 10
DATASET_MEAN, DATASET_STD = [0.45] * 3, [0.25] * 3
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture
def offline_caches(tmp_path, monkeypatch):
    """Empty package caches under tmp_path, robprune offline (HF_HUB_OFFLINE=1)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))  # read at import
    return tmp_path


def arch(model: list[str], channels: int = 3) -> dict:
    return {"model": dict(compose(model).model), "in_channels": channels, "image_size": SIZE, "num_classes": CLASSES,
            "mean": DATASET_MEAN[:1] * channels, "std": DATASET_STD[:1] * channels}


def normalization(model: nn.Module) -> tuple[tuple, tuple]:
    return tuple(model.normalize.mean.flatten().tolist()), tuple(model.normalize.std.flatten().tolist())


def torchvision_file(name: str = "resnet18") -> tuple[Path, dict]:
    """Where the hook looks for torchvision's DEFAULT weights of ``name`` (TORCH_HOME), and a real state dict of
    that architecture (ImageNet's 1000 classes, random values) saved there as torch.save writes it."""
    url = torchvision.models.get_model_weights(name).DEFAULT.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    path.parent.mkdir(parents=True)
    state = torchvision.models.get_model(name, weights=None).state_dict()
    torch.save(state, path)
    return path, state


def same_logits(loaded: nn.Module, reference: nn.Module, head: str) -> None:
    """The loaded wrapped network computes what ``reference`` (the file's weights, the same stem) computes
    once both share the new classifier."""
    setattr(reference, head, copy.deepcopy(getattr(loaded.net, head)))
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.net.eval()(x), reference.eval()(x))


# ---------------------------------------------------------------- the builder

def test_builder_contract_and_small_stem():
    model = dense_model(arch(["model=torchvision"]))
    assert isinstance(model.net, torchvision.models.ResNet) and model.net.fc.out_features == CLASSES
    assert model.net.conv1.stride == (1, 1) and isinstance(model.net.maxpool, nn.Identity)  # auto at 32 px
    imagenet_stem = dense_model(arch(["model=torchvision", "model.stem=torchvision"]))
    assert imagenet_stem.net.conv1.stride == (2, 2) and isinstance(imagenet_stem.net.maxpool, nn.MaxPool2d)
    gray = dense_model(arch(["model=torchvision", "model.name=mobilenet_v3_small"], channels=1))
    assert gray(torch.rand(2, 1, SIZE, SIZE)).shape == (2, CLASSES)    # first conv takes the dataset's channels
    with pytest.raises(ConfigError, match=r"model\.stem=small: torchvision's mobilenet_v3_small has no ResNet stem"):
        dense_model(arch(["model=torchvision", "model.name=mobilenet_v3_small", "model.stem=small"]))


# ---------------------------------------------------------------- model.init=pretrained

def test_torchvision_pretrained_loads_the_cached_file(offline_caches):
    path, state = torchvision_file("resnet18")
    a = arch(["model=torchvision", "model.init=pretrained", "model.head=new"])
    model = dense_model(a)
    record = load_start(model, a["model"], num_classes=CLASSES)
    assert record["kind"] == "pretrained" and record["into"] == "net" and record["head"] == "new"
    assert record["published"]["metrics"]["ImageNet-1K"]["acc@1"] == pytest.approx(69.758)
    mean, std = normalization(model)
    assert mean == pytest.approx(IMAGENET_MEAN) and std == pytest.approx(IMAGENET_STD)  # the weights', not the dataset's
    reference = torchvision.models.get_model("resnet18", weights=None)
    reference.load_state_dict(state)
    reference.conv1.stride, reference.maxpool = (1, 1), nn.Identity()     # the same small stem
    same_logits(model, reference, "fc")
    assert path.is_file()


def test_torchvision_pretrained_offline_without_the_file_is_one_line(offline_caches):
    a = arch(["model=torchvision", "model.init=pretrained", "model.head=new"])
    with pytest.raises(ConfigError) as err:
        load_start(dense_model(a), a["model"])
    line = str(err.value)
    assert "\n" not in line and line.count("model.init=pretrained") == 1 and "offline" in line
    assert "resnet18-f37072fd.pth" in line and "model.init=path/to/weights.safetensors" in line


def test_pretrained_weights_refuse_another_channel_count(offline_caches):
    torchvision_file("resnet18")
    a = arch(["model=torchvision", "model.init=pretrained", "model.head=new"], channels=1)
    with pytest.raises(ConfigError, match=r"model\.init=pretrained: the published weights .* take 3-channel images but "
                                          r"the dataset gives 1"):
        load_start(dense_model(a), a["model"])


def timm_hub_file(name: str, cache: Path) -> dict:
    """A real timm state dict of ``name``'s architecture in the Hugging Face hub cache layout that
    hf_hub_download(local_files_only=True) reads: models--org--repo/refs/main -> snapshots/<commit>/file."""
    import timm
    from safetensors.torch import save_file
    from timm.models import get_pretrained_cfg

    repo = get_pretrained_cfg(name).hf_hub_id
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    state = timm.create_model(name, pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "snapshots" / commit / "model.safetensors"))
    return state


def test_timm_pretrained_loads_from_the_hub_cache(offline_caches):
    pytest.importorskip("timm")
    import huggingface_hub.constants
    import timm

    state = timm_hub_file("resnet10t", Path(huggingface_hub.constants.HF_HUB_CACHE))
    a = arch(["model=timm", "model.name=resnet10t", "model.init=pretrained", "model.head=new"])
    model = dense_model(a)
    record = load_start(model, a["model"], num_classes=CLASSES)
    assert record["into"] == "net" and record["published"]["tag"] == "resnet10t.c3_in1k"
    mean, std = normalization(model)
    assert mean == pytest.approx(IMAGENET_MEAN) and std == pytest.approx(IMAGENET_STD)
    reference = timm.create_model("resnet10t", pretrained=False)
    reference.load_state_dict(state)
    reference.conv1[0].stride, reference.maxpool = (1, 1), nn.Identity()  # timm's small stem (first_conv: conv1.0)
    same_logits(model, reference, "fc")


def test_timm_pretrained_falls_back_to_torch_hubs_checkpoint(offline_caches):
    """A tag whose file is not in the hub cache but in torch.hub's checkpoint folder (its pretrained_cfg url)."""
    pytest.importorskip("timm")
    import timm
    from timm.models import get_pretrained_cfg

    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(get_pretrained_cfg("resnet10t").url).name
    path.parent.mkdir(parents=True)
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), path)
    a = arch(["model=timm", "model.name=resnet10t", "model.init=pretrained", "model.head=new"])
    assert load_start(dense_model(a), a["model"])["tensors"] > 0


def test_timm_pretrained_offline_without_the_file_is_one_line(offline_caches):
    pytest.importorskip("timm")
    a = arch(["model=timm", "model.name=resnet10t", "model.init=pretrained"])
    with pytest.raises(ConfigError) as err:
        load_start(dense_model(a), a["model"])
    line = str(err.value)
    assert "\n" not in line and "model.init=pretrained" in line and "offline" in line and "timm/resnet10t.c3_in1k" in line
    assert "model.init=path/to/weights.safetensors" in line


# ---------------------------------------------------------------- the whole command

def test_pipeline_from_torchvision_weights(offline_caches, capsys):
    """robprune run model=torchvision model.init=pretrained model.head=new on 32 px synthetic images, every
    stage shrunk: the run starts from the cached file and records it."""
    from robprune.cli import main
    from tests.test_every_option import BASES, shrink

    path, _ = torchvision_file("resnet18")
    chosen = [*BASES["image32"], "model=torchvision", "model.init=pretrained", "model.head=new", "prune=none",
              "finetune=none", "train=standard", f"cache_dir={offline_caches / 'cache'}"]
    run = offline_caches / "run"
    code = main(["run", *chosen, *shrink(compose(chosen)), "eval.n_examples.pgd20=4", f"hydra.run.dir={run}"])
    assert code in (0, None), capsys.readouterr().err[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["clean_acc"] <= 1
    trained = [json.loads(p.read_text()) for p in (offline_caches / "cache" / "train").rglob("model.json")]
    assert len(trained) == 1                                           # the train stage's checkpoint records its start
    start = trained[0]["start"]
    assert start["kind"] == "pretrained" and start["head"] == "new" and start["sha256"] == file_digest(path)
    assert start["published"]["weights"] == "ResNet18_Weights.IMAGENET1K_V1"
