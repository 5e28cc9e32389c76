"""How the one training loop runs on the hardware: data-parallel processes, precision, memory format, compile.

``trainer`` (conf/config.yaml) is read by every training stage and enters their cache keys:

- ``devices``: processes of data-parallel training with ``torch.distributed`` DistributedDataParallel
  (gloo on CPU, NCCL on CUDA). robprune starts them itself (``torch.multiprocessing``, one per device)
  for each training call of a stage; the stage's own process keeps walking the graph, so pruning and
  every write stay in one process. Each rank trains on its shard of every global batch
  (``data.batch_size`` stays the *global* batch: rank r takes rows r, r+N, ... of it), its loss scaled
  by its share of the batch so that the averaged gradient equals the single-process gradient of the
  global batch; attacks during training run per rank on its shard with its local replica. Rank 0
  alone writes the epoch checkpoints (resume works as in one process) and hands the trained weights
  and the hooks' state back. Differences to one process, stated: BatchNorm statistics are per rank
  (no SyncBatchNorm on CPU; ``sync_batchnorm: true`` converts on CUDA), random draws inside the
  objective (attack starts, dropout) come from per-rank streams, and a final batch smaller than the
  number of devices is skipped. The eval stage shares an image evaluation's seeded blocks over the
  same ranks (:mod:`robprune.evaluate.blocks`; its numbers do not depend on their number, so
  ``devices`` is not in its key). Both are a *task* ``task(rank, world, payload, trainer, device)``
  run by :func:`spawn` or, under torchrun, :func:`broadcast` and :func:`serve`.
- ``precision: bf16``: the objective's forward runs under ``torch.autocast(bfloat16)`` (CUDA); the
  weights, optimizer and backward stay fp32. ``channels_last``: model and 4-D inputs in NHWC.
  ``compile``: ``torch.compile`` of the forward. Evaluation stays fp32, contiguous and eager, so an
  accuracy under attack is never measured with a cheaper gradient than the one a user expects.
- GPU-only options (bf16, compile) fall back on a CPU with a one-line note (:func:`resolve`);
  ``channels_last`` applies anywhere (it is a memory layout).
"""
from __future__ import annotations

import copy
import logging
import os
import socket
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from robprune.errors import ConfigError, RobpruneError
from robprune.options import BOOL, Choice, check_fields, defaults_of, option

log = logging.getLogger("robprune")
PRECISIONS = ("fp32", "bf16")


def _devices(value, key: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}; e.g. {key}=2")


@dataclass(frozen=True)
class TrainerOptions:
    """The ``trainer`` node's options, declared once (schema, defaults, meaning); they enter every training
    stage's key."""

    devices: int = option(1, _devices, help="data-parallel processes (DistributedDataParallel: GPUs on CUDA, processes "
                          "on a CPU); data.batch_size stays the global batch")
    precision: str = option("fp32", Choice(*PRECISIONS), help="fp32 | bf16 (autocast of the training forward; GPU "
                            "option, fp32 on a CPU with a note)")
    channels_last: bool = option(False, BOOL, help="NHWC model and inputs during training")
    compile: bool = option(False, BOOL, help="torch.compile the training forward (GPU option, eager on a CPU with a note)")
    sync_batchnorm: bool = option(False, BOOL, help="SyncBatchNorm across ranks (CUDA); otherwise each rank keeps its "
                                  "own BN statistics")


DEFAULTS = defaults_of(TrainerOptions)


@dataclass(frozen=True)
class Trainer(TrainerOptions):
    """The resolved ``trainer`` node: what training actually does on this device (after fallbacks)."""

    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None

    def record(self) -> dict:
        """metrics.json's ``trainer``: the options in effect and the fallback notes."""
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out


def node_values(node) -> dict:
    """The trainer node's values over the defaults (a run's config.yaml from before the node had none)."""
    values = dict(DEFAULTS)
    if node is not None:
        values.update({k: node[k] for k in DEFAULTS if k in node})
    return values


def available_devices(device: torch.device) -> int:
    """Data-parallel processes this machine can run: visible GPUs on CUDA, CPU cores on a CPU."""
    if device.type == "cuda":
        return torch.cuda.device_count()
    from robprune.launch import available_cores

    return available_cores()


def resolve(node, device: torch.device) -> Trainer:
    """ConfigError for a trainer node this device cannot run; fall back (with a note) for GPU-only options on a CPU."""
    v = node_values(node)
    check_fields(TrainerOptions(**v), "trainer")
    devices = v["devices"]
    have = available_devices(device)
    under = launched()
    if under:  # torchrun started the ranks: their number is the world size
        if devices not in (1, under[1]):
            raise ConfigError(f"trainer.devices={devices} but torchrun started {under[1]} processes; leave "
                              f"trainer.devices at 1 or set it to {under[1]}")
        devices = have = under[1]
    if devices > have:
        what = f"{have} visible CUDA GPU(s)" if device.type == "cuda" else f"{have} CPU core(s) available to this process"
        raise ConfigError(f"trainer.devices={devices} but this machine has {what}; use trainer.devices={max(1, have)} or fewer")
    if device.type == "mps" and devices > 1:
        raise ConfigError("trainer.devices > 1 needs CUDA GPUs or CPU processes; MPS has no torch.distributed backend; "
                          "use trainer.devices=1")
    precision, compile_, sync_bn, notes = v["precision"], bool(v["compile"]), bool(v["sync_batchnorm"]), []
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"trainer.precision=bf16 but {torch.cuda.get_device_name(device)} has no bfloat16 support "
                              "(it needs compute capability 8.0+, e.g. A100/H100); use trainer.precision=fp32")
        if device.type != "cuda":
            notes.append(f"trainer.precision=bf16 is a GPU option; training on {device.type} stays fp32")
            precision = "fp32"
    if compile_ and device.type != "cuda":
        notes.append(f"trainer.compile=true is a GPU option; training on {device.type} runs eagerly")
        compile_ = False
    if sync_bn and device.type != "cuda":
        if devices > 1:
            notes.append("trainer.sync_batchnorm=true needs CUDA; on a CPU each rank keeps its own BatchNorm statistics")
        sync_bn = False
    return Trainer(devices=devices, precision=precision, channels_last=bool(v["channels_last"]), compile=compile_,
                   sync_batchnorm=sync_bn, notes=tuple(notes))


def check_objective(cfg_train, key: str, trainer: Trainer) -> None:
    """Objectives that call model methods other than forward (FreeLB's embedding-space steps) bypass
    DistributedDataParallel's gradient averaging: refused with devices > 1 rather than trained wrong."""
    target = str((cfg_train.get("objective") or {}).get("_target_", ""))
    if trainer.devices > 1 and target.endswith("freelb"):
        raise ConfigError(f"{key}.objective freelb steps in the embedding space outside the model's forward, which "
                          "DistributedDataParallel cannot average; use trainer.devices=1 for it")


# --- data-parallel processes ------------------------------------------------------------------------

@dataclass
class Rank:
    """This process's place in a data-parallel group (what :func:`robprune.train.fit` needs)."""

    rank: int
    world: int
    seed: int  # per-rank random streams are derived from it (attack starts, dropout)

    def epoch_seed(self, epoch: int) -> int:
        return (self.seed * 1_000_003 + epoch * 1_009 + self.rank) % (2 ** 63 - 1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_model(model):
    """The module a wrapper (DistributedDataParallel, torch.compile) runs: what attacks and hooks use."""
    return getattr(model, "_robprune_local", model)


def wrap_forward(model, trainer: Trainer, device: torch.device, rank: Rank | None):
    """The forward the objective calls: the model itself, or DistributedDataParallel and/or torch.compile
    around it (the optimizer, hooks and checkpoints keep the plain module)."""
    forward = model
    if rank is not None:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if trainer.compile:
        forward = torch.compile(forward)
    if forward is not model:
        object.__setattr__(forward, "_robprune_local", model)  # not a registered submodule
    return forward


def spawn_fit(payload: dict, trainer: Trainer, device: torch.device, threads: int | None) -> dict:
    """Train (:func:`train_rank`) in ``trainer.devices`` processes; returns rank 0's result
    ``{"state": model state_dict (CPU), "history": [...], "hooks": [hook state or None, ...]}``."""
    log.info("%s: data-parallel training on %d %s processes (DistributedDataParallel, %s)", payload["description"],
             trainer.devices, device.type, "nccl" if device.type == "cuda" else "gloo")
    return decode_result(spawn(train_rank, payload, trainer, device, threads, "training"))


def spawn(task: Callable, payload: dict, trainer: Trainer, device: torch.device, threads: int | None, what: str) -> Any:
    """Run ``task(rank, world, payload, trainer, device)`` (a module-level function: it is pickled by
    name) in ``trainer.devices`` spawned processes joined in one gloo / NCCL group; returns rank 0's
    result. A rank's user error (RobpruneError) is raised here as it is; anything else as a RuntimeError
    naming ``what`` ("training", "evaluation"), with the rank's traceback chained."""
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    world = trainer.devices
    queue = mp.get_context("spawn").SimpleQueue()
    per_rank = max(1, (threads or torch.get_num_threads()) // world) if device.type == "cpu" else 1
    context = mp.start_processes(_worker, args=(world, free_port(), task, payload, trainer, device.type, per_rank, queue),
                                 nprocs=world, join=False, start_method="spawn")
    sent: list = []
    try:
        while not context.join(timeout=0.5):
            while not queue.empty():
                sent.append(queue.get())
    except ProcessException as err:  # a rank's exception (with its traceback text) or its death
        while not queue.empty():
            sent.append(queue.get())
        for kind, value in sent:
            if kind == "error":  # what the user can fix: one line, as in one process
                raise value from None
        # anything else is a bug or the machine: a traceback, with the rank's last line in front
        message = str(err).strip().splitlines()
        raise RuntimeError(f"data-parallel {what} failed: {message[-1] if message else err}") from err
    while not queue.empty():
        sent.append(queue.get())
    results = [value for kind, value in sent if kind == "result"]
    if not results:
        raise RuntimeError(f"data-parallel {what} ended without rank 0's result")
    return results[0]


def _plain(obj):
    """Hook state as plain Python (tensors as tagged lists) for the trip back to the parent."""
    if torch.is_tensor(obj):
        return {"__tensor__": obj.detach().cpu().tolist(), "dtype": str(obj.dtype).removeprefix("torch.")}
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _tensors(obj):
    if isinstance(obj, dict) and "__tensor__" in obj:
        return torch.tensor(obj["__tensor__"], dtype=getattr(torch, obj["dtype"]))
    if isinstance(obj, dict):
        return {k: _tensors(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_tensors(v) for v in obj]
    return obj


def _worker(rank: int, world: int, port: int, task: Callable, payload: dict, trainer: Trainer, device_type: str,
            threads: int, queue) -> None:
    """One spawned rank: join the group, run the task; rank 0 sends its result back to the parent, a rank
    that meets a user error sends that."""
    import torch.distributed as dist

    _die_with_parent()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(threads)
    logging.getLogger("robprune").setLevel(logging.INFO if rank == 0 else logging.WARNING)
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world)
    try:
        device = torch.device("cuda", rank) if device_type == "cuda" else torch.device("cpu")
        try:
            result = task(rank, world, payload, trainer, device)
        except RobpruneError as err:
            queue.put(("error", err))
            raise
        if rank == 0:
            queue.put(("result", result))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def train_rank(rank: int, world: int, payload: dict, trainer: Trainer, device: torch.device) -> dict | None:
    """This rank's replica trained on its shards (the group exists); rank 0 returns the result
    ``{"state": safetensors bytes, "history": [...], "hooks": [plain hook state or None, ...]}``."""
    from robprune.train.loop import fit
    from robprune.train.recipe import build_training, per_step, schedule_factor

    if device.type == "cuda":
        torch.cuda.set_device(device)
    # a private copy: spawn hands every rank the same shared-memory tensors, which would make each
    # optimizer step land once per rank; one deepcopy keeps the hooks' references into the model
    model, hooks = copy.deepcopy((payload["model"], payload["hooks"]))
    model.to(device)
    if trainer.sync_batchnorm:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    cfg_train = payload["cfg_train"]
    objective, optimizer = build_training(cfg_train, model, payload["key"])
    for hook in hooks:
        if hasattr(hook, "attach"):  # hooks that re-trace the replica (gradual channel masks)
            hook.attach(model)
        if hasattr(hook, "bind"):
            hook.bind(optimizer, model)
    generator = torch.Generator().manual_seed(0)
    generator.set_state(payload["generator_state"])
    data = payload["data"]
    loader = data.loader(data.train_x, data.train_y, payload["batch_size"], shuffle=True, generator=generator,
                         augment=payload["augment"], device=device, **payload.get("loader_options", {}))
    if hasattr(loader, "shard"):  # a streamed loader: each rank decodes only its rows of every global batch
        loader = loader.shard(rank, world)
    epochs = int(cfg_train.epochs)
    me = Rank(rank, world, payload["seed"])
    history = fit(model, loader, objective, optimizer, epochs=epochs, generator=generator,
                  lr_factor=lambda e: schedule_factor(cfg_train.schedule, e, epochs),
                  per_step=per_step(cfg_train.schedule), clip_grad_norm=cfg_train.get("clip_grad_norm"),
                  checkpoint_dir=payload["checkpoint_dir"], progress=False, description=payload["description"],
                  hooks=hooks, forward_model=wrap_forward(model, trainer, device, me), rank=me,
                  autocast_dtype=trainer.autocast_dtype, channels_last=trainer.channels_last)
    if rank != 0:
        return None
    from safetensors.torch import save  # bytes: shared-memory tensors would die with a spawned rank

    state = save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    return {"state": state, "history": history,
            "hooks": [_plain(hook.state()) if hasattr(hook, "state") else None for hook in hooks]}


def decode_result(result: dict) -> dict:
    from safetensors.torch import load

    return {**result, "state": load(result["state"]),
            "hooks": [None if h is None else _tensors(h) for h in result["hooks"]]}


# --- under torchrun: the job's processes are the ranks ------------------------------------------------

def launched() -> tuple[int, int] | None:
    """(rank, world size) when this process was started by torchrun (or another launcher setting
    ``RANK`` / ``WORLD_SIZE``) with more than one process; else None."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or "RANK" not in os.environ:
        return None
    return int(os.environ["RANK"]), world


def launched_device(device_type: str) -> torch.device:
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if device_type == "cuda" else torch.device("cpu")


def join_launched_group(device_type: str) -> None:
    """Join torchrun's group once per process (rendezvous from its environment)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(launched_device("cuda"))
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")


def broadcast_fit(payload: dict, trainer: Trainer, device: torch.device) -> dict:
    """Rank 0 under torchrun: send the training to the serving ranks (:func:`serve`), train as rank 0."""
    import torch.distributed as dist

    join_launched_group(device.type)
    log.info("%s: data-parallel training on the %d torchrun processes (DistributedDataParallel, %s)",
             payload["description"], launched()[1], dist.get_backend())
    return decode_result(broadcast(train_rank, payload, trainer, device))


def broadcast(task: Callable, payload: dict, trainer: Trainer, device: torch.device) -> Any:
    """Rank 0 under torchrun: send ``task`` (see :func:`spawn`) to the serving ranks (:func:`serve`), run it
    as rank 0 and return its result."""
    import torch.distributed as dist

    rank, world = launched()
    join_launched_group(device.type)
    dist.broadcast_object_list([{"task": task, "payload": payload, "trainer": trainer, "device_type": device.type}], src=0)
    result = task(rank, world, payload, trainer, launched_device(device.type))
    dist.barrier()
    return result


def on_ranks(task: Callable, payload: dict, trainer: Trainer, device: torch.device, what: str) -> Any:
    """``task`` on every data-parallel rank, rank 0's result back: torchrun's processes when it started
    this job (this process is rank 0, :func:`broadcast`), else ``trainer.devices`` spawned ones (:func:`spawn`)."""
    where = f"the {trainer.devices} torchrun" if launched() else f"{trainer.devices} {device.type}"
    log.info("data-parallel %s on %s processes (%s)", what, where, "nccl" if device.type == "cuda" else "gloo")
    if launched():
        return broadcast(task, payload, trainer, device)
    return spawn(task, payload, trainer, device, torch.get_num_threads(), what)


def stop_serving() -> None:
    """Rank 0 at the end of the job: release the serving ranks."""
    import torch.distributed as dist

    if launched() and dist.is_initialized():
        dist.broadcast_object_list([None], src=0)
        dist.destroy_process_group()


def serve() -> int:
    """Ranks > 0 under torchrun: run the tasks rank 0 broadcasts (training, evaluation) until it says stop;
    nothing written here."""
    import torch.distributed as dist

    rank, world = launched()
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    join_launched_group(device_type)
    while True:
        box = [None]
        dist.broadcast_object_list(box, src=0)
        if box[0] is None:
            break
        task = box[0]
        task["task"](rank, world, task["payload"], task["trainer"], launched_device(task["device_type"]))
        dist.barrier()
    dist.destroy_process_group()
    return 0


def _die_with_parent() -> None:
    """Linux: a rank gets SIGKILL when the process that started it dies (a killed job leaves no orphan
    rank writing checkpoints); elsewhere a no-op."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except OSError:
            pass
