"""Data-parallel training (trainer.devices, DistributedDataParallel on gloo, 2 CPU processes) and the
trainer's precision / memory-format options: equal to one process, rank 0 alone writes, resume after
SIGKILL, and the bad-input lines. Evaluation sharded over the same ranks by seeded blocks: the metrics
of one process exactly, rank 0 alone writes, a rank's user error is one line."""
import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from robprune.compose import compose
from robprune.data import build_data
from robprune.data.loader import BatchLoader
from robprune.errors import ConfigError
from robprune.evaluate.model import evaluate_model
from robprune.models import small_cnn
from robprune.train.loop import fit, load_epoch_checkpoint
from robprune.train.objectives import Standard
from robprune.train.trainer import Rank, Trainer, free_port, on_ranks, resolve, wrap_forward
from tests.helpers import REPO, SHRINK, read_metrics, robprune, stable

N, BATCH = 71, 16  # the last global batch holds 7 examples: shards of 4 and 3 (the loss weighting matters)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (N, 1, 4, 4), generator=g, dtype=torch.uint8), torch.randint(0, 3, (N,), generator=g)


def _train(rank: int, world: int, port: int, out: str, queue) -> None:
    """fit() as one rank of ``world`` (world 1: the plain single-process loop)."""
    torch.set_num_threads(1)
    model = _model()
    me = None
    if world > 1:
        import torch.distributed as dist

        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        me = Rank(rank, world, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(5)
    loader = BatchLoader(*_data(), BATCH, shuffle=True, generator=generator)
    forward = wrap_forward(model, Trainer(), torch.device("cpu"), me) if me else model
    history = fit(model, loader, Standard(), optimizer, epochs=3, lr_factor=lambda e: 1.0, generator=generator,
                  progress=False, checkpoint_dir=__import__("pathlib").Path(out) / f"rank{rank}",
                  forward_model=forward, rank=me)
    if rank == 0:
        queue.put(([p.detach().tolist() for p in model.parameters()], history))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def test_two_gloo_ranks_train_like_one_process_and_only_rank0_writes(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    _train(0, 1, 0, str(tmp_path / "single"), queue)
    single_params, single_log = queue.get()
    mp.start_processes(_train, args=(2, free_port(), str(tmp_path / "ddp"), queue), nprocs=2, start_method="spawn")
    ddp_params, ddp_log = queue.get()
    for a, b in zip(single_params, ddp_params):  # the averaged gradient is the global batch's (float order aside)
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-6, rtol=0)
    assert [round(r["loss"], 5) for r in ddp_log] == [round(r["loss"], 5) for r in single_log]
    assert (tmp_path / "ddp" / "rank0" / "last.json").exists()  # rank 0 writes the epoch checkpoint
    assert not (tmp_path / "ddp" / "rank1").exists()           # rank 1 writes nothing
    restored = _model()
    state = load_epoch_checkpoint(tmp_path / "ddp" / "rank0", restored, torch.optim.SGD(restored.parameters(), lr=0.1),
                                  torch.Generator())
    assert state.epoch == 3


def test_channels_last_training_matches_and_checkpoints_are_dense(tmp_path):
    results = []
    for channels_last in (False, True):
        model = _model()
        if channels_last:
            model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        generator = torch.Generator().manual_seed(5)
        fit(model, BatchLoader(*_data(), BATCH, shuffle=True, generator=generator), Standard(), optimizer, epochs=2,
            lr_factor=lambda e: 1.0, generator=generator, progress=False, checkpoint_dir=tmp_path / str(channels_last),
            channels_last=channels_last)
        assert model[0].weight.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        assert (tmp_path / str(channels_last) / "last.safetensors").exists()  # NHWC weights saved as dense rows
    assert torch.allclose(results[0], results[1], atol=1e-5)


def test_trainer_options_resolve_with_fallbacks_and_refuse_what_cannot_run():
    cpu = torch.device("cpu")
    t = resolve({"devices": 1, "precision": "bf16", "channels_last": True, "compile": True}, cpu)
    assert (t.precision, t.compile, t.channels_last) == ("fp32", False, True)
    assert any("bf16" in n for n in t.notes) and any("compile" in n for n in t.notes)
    assert resolve(None, cpu) == Trainer()  # a run config from before the node: the defaults
    with pytest.raises(ConfigError, match=r"trainer.devices=4096 .*CPU core"):
        resolve({"devices": 4096}, cpu)
    with pytest.raises(ConfigError, match="trainer.devices must be a positive integer"):
        resolve({"devices": 0}, cpu)
    with pytest.raises(ConfigError, match="trainer.precision must be one of fp32, bf16"):
        resolve({"precision": "fp16"}, cpu)


def test_under_torchrun_devices_is_the_world_size(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert resolve({"devices": 1}, cpu).devices == 2  # torchrun's processes are the ranks
    assert resolve({"devices": 2}, cpu).devices == 2
    with pytest.raises(ConfigError, match="trainer.devices=3 but torchrun started 2 processes"):
        resolve({"devices": 3}, cpu)


# PGD on all 60 points, AutoAttack standard on 40, corruptions on all: 4 blocks of 16, 2 per rank
SHARDED_EVAL = ["eval=default", "eval.block_size=16", "eval.n_examples.pgd20=null", "eval.n_examples.autoattack=40",
                "eval.attacks.pgd20.steps=3", "eval.attacks.autoattack.n_iter=3", "eval.attacks.autoattack.n_queries=20",
                "eval.large_eps_n=24", "+eval/corruptions@eval.corruptions=default",
                "eval.corruptions.names=[gaussian_noise,fog]", "eval.corruptions.severities=[2]",
                "eval.corruptions.n_examples=null"]


@dataclasses.dataclass
class _TestSplit:
    """What the image evaluator reads of a data bundle."""

    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int = 10
    modality: str = "image"


@pytest.fixture(scope="module")
def digits_model():
    """(small_cnn after 2 epochs of Adam on the digits train split, the first 60 test points)."""
    data = build_data(compose([]).dataset)
    x, y = data.train_x.float() / 255, data.train_y
    torch.manual_seed(0)
    model = small_cnn(in_channels=1, image_size=8, num_classes=10, mean=[0.5], std=[0.5])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(2):
        for i in range(0, x.shape[0], 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    return model.eval(), _TestSplit(data.test_x[:60], data.test_y[:60])


def _key_numbers(metrics: dict) -> dict:
    keep = ("clean_acc", "robust_acc", "n_eval", "corruption_acc/mean")
    return {**{k: v for k, v in metrics.items() if k.startswith(keep)},
            **{f"checks/{k}": v for k, v in metrics["checks"].items() if not k.endswith("_max")}}


def _sharded(model, data, cfg, work, devices):
    """The eval stage's call: every block here (devices 1) or shared out over spawned gloo ranks."""
    ranks = None if devices == 1 else functools.partial(on_ranks, trainer=Trainer(devices=devices),
                                                        device=torch.device("cpu"), what="evaluation")
    return evaluate_model(model, data, cfg.eval, seed=0, test_split="test", device="cpu", work=work, on_ranks=ranks)


def test_two_gloo_ranks_evaluate_like_one_process_and_only_rank0_writes(digits_model, tmp_path):
    """Blocks 0 and 2 on rank 0, 1 and 3 on rank 1: eval.json's metrics (checks included) equal one
    process's, and only rank 0 kept progress (the flags of its blocks)."""
    model, data = digits_model
    cfg = compose(SHARDED_EVAL)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank (the float results of a forward may depend on the thread count)
    try:
        single = _sharded(model, data, cfg, tmp_path / "single", 1)
        ranks = _sharded(model, data, cfg, tmp_path / "ranks", 2)
    finally:
        torch.set_num_threads(threads)
    single, ranks = json.loads(json.dumps(single)), json.loads(json.dumps(ranks))  # as eval.json holds them
    print("one process:", _key_numbers(single), "\n2 gloo ranks:", _key_numbers(ranks))
    assert ranks == single, f"one process: {_key_numbers(single)}\n2 ranks: {_key_numbers(ranks)}"
    assert single["n_eval/pgd20"] == 60 and single["n_eval/autoattack"] == 40 and single["checks"]["passed"]
    assert 0 < single["robust_acc/autoattack"] < single["clean_acc/autoattack"]
    for work, blocks in ((tmp_path / "single", [0, 1, 2, 3]), (tmp_path / "ranks", [0, 2])):
        assert sorted(p.name for p in (work / "flags" / "pgd20").iterdir()) == [f"block{k}.safetensors" for k in blocks]
    assert sorted(p.name for p in (tmp_path / "ranks" / "autoattack" / "autoattack").glob("*.json")) == [
        "block0.state.json", "block2.state.json"]  # AutoAttack's subset has 3 blocks; block 1 was rank 1's


def test_a_ranks_user_error_is_one_line(digits_model):
    """AutoAttack's targeted attacks need 4 classes: raised inside a spawned rank, re-raised here as the
    same ConfigError, not a traceback of the rank."""
    model, data = digits_model
    three = torch.nn.Sequential(model, torch.nn.Linear(10, 3)).eval()
    cfg = compose(["eval=autoattack", "eval.n_examples.autoattack=30", "eval.large_eps_check=false"])
    with pytest.raises(ConfigError, match="need >= 4 classes"):
        _sharded(three, _TestSplit(data.test_x, data.test_y % 3, 3), cfg, None, 2)


# eval.block_size=40: PGD's 120 points in 3 blocks, so the ranks share the eval stage too
DDP_RUN = [*SHRINK, "train=standard", "finetune=standard", "train.epochs=40", "train.optimizer.lr=0.002",
           "eval.block_size=40"]


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory):
    """The reference: clean training in one process; GPU-only options asked for on a CPU fall back with a note."""
    root = tmp_path_factory.mktemp("ddp_ref")
    ref = robprune(["run", *DDP_RUN, "trainer.precision=bf16", "trainer.compile=true", f"cache_dir={root / 'cache'}",
                    f"hydra.run.dir={root / 'run'}"], cwd=root)
    assert ref.returncode == 0, ref.stderr[-2000:]
    metrics = read_metrics(root / "run")
    assert metrics["trainer"]["precision"] == "fp32" and metrics["trainer"]["compile"] is False
    assert len(metrics["trainer"]["notes"]) == 2 and "is a GPU option" in (root / "run" / "run.log").read_text()
    return root / "run", metrics


def _same_results(metrics: dict, ref: dict) -> None:
    drop = ("trainer",)
    assert {k: v for k, v in stable(metrics).items() if k not in drop} == {k: v for k, v in stable(ref).items() if k not in drop}


@pytest.mark.slow  # ~55 s of a 10-minute CI budget: --runslow; the suite keeps the one-process kill (test_cli) and
# --fuzz-long kills at random moments (tests/test_fuzz_kills.py); a DDP resume reads the same epoch checkpoint
def test_ddp_run_killed_and_resumed_matches_one_process(tmp_path, single_process_run):
    """A 2-process run is SIGKILLed (the whole job) mid-training, rerun, resumes from rank 0's epoch
    checkpoint and ends with the metrics of an uninterrupted single-process run (clean training: no
    per-rank random draws)."""
    ref_run, ref_metrics = single_process_run

    cache, run = tmp_path / "cache", tmp_path / "run"
    args = ["run", *DDP_RUN, "trainer.devices=2", f"cache_dir={cache}", f"hydra.run.dir={run}"]
    env = {**os.environ, "ROBPRUNE_QUIET": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "robprune.cli", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline, ckpts = time.time() + 180, []
    while time.time() < deadline and not ckpts:
        ckpts = list(cache.glob("train/*.partial/epochs/last.json"))
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the job: the robprune process and its ranks
    proc.wait()
    assert ckpts, "no epoch checkpoint appeared before the kill"
    # read after the kill: the epoch the job died after; the stage's work folder must still be unfinished
    assert ckpts[0].exists(), "training finished before the kill (the .partial folder was published)"
    last = json.loads(ckpts[0].read_text())
    epoch_at_kill = last["epoch"]
    # the checkpoint names its epoch and carries that many history rows (a writer that recorded the wrong
    # epoch, or the history of another one, fails here); a kill after the last epoch leaves nothing to resume
    history = [row["epoch"] for row in last["history"]]
    assert history == list(range(1, epoch_at_kill + 1)) and 1 <= epoch_at_kill < 40, \
        f"checkpoint after epoch {epoch_at_kill} with history {history}: inconsistent, or nothing left to resume"
    assert not (run / "metrics.json").exists()

    res = robprune(args, cwd=tmp_path, timeout=400)
    assert res.returncode == 0, res.stderr[-2000:]
    log = (run / "run.log").read_text()
    assert "train: resuming from the checkpoint after epoch" in log
    assert f"train: resuming from the checkpoint after epoch {epoch_at_kill}\n" in log  # where the kill left it
    assert "train epoch 40/40 (2 ranks)" in log and "finetune epoch 1/1 (2 ranks)" in log
    metrics = read_metrics(run)
    assert metrics["trainer"]["devices"] == 2
    _same_results(metrics, ref_metrics)
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in ref_run.iterdir())


def test_torchrun_ranks_train_what_rank0_sends_and_write_nothing(tmp_path, single_process_run):
    """Under torchrun (2 processes, gloo) rank 0 runs the job and the other rank serves its training
    calls: same metrics as one process, one run directory, nothing else written."""
    ref_run, ref_metrics = single_process_run
    env = {**os.environ, "ROBPRUNE_QUIET": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={free_port()}", "-m", "robprune.cli", "run", *DDP_RUN,
                          f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "data-parallel training on the 2 torchrun processes" in (tmp_path / "run" / "run.log").read_text()
    metrics = read_metrics(tmp_path / "run")
    assert metrics["trainer"]["devices"] == 2
    _same_results(metrics, ref_metrics)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "run"]


@pytest.mark.gpu
def test_gpu_options_are_in_effect_on_cuda(tmp_path):
    """On a CUDA machine bf16, channels_last and compile apply (no fallback note) and the run ends."""
    res = robprune(["run", *SHRINK, "trainer.precision=bf16", "trainer.channels_last=true", "trainer.compile=true",
                    f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    trainer = read_metrics(tmp_path / "run")["trainer"]
    assert (trainer["precision"], trainer["channels_last"], trainer["compile"], trainer["notes"]) == ("bf16", True, True, [])
