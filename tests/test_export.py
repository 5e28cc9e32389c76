"""robprune export: real runs (pruned, PTQ-quantised, a tiny text model) written as ONNX and TorchScript,
read back WITHOUT robprune (onnxruntime / torch.jit.load in a fresh process) on real test inputs, the
QDQ graph carrying robprune's own scales, dynamic axes, and the bad inputs (exit 2, one line, nothing
written)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from omegaconf import OmegaConf
from torch import nn

from robprune.checkpoint import load_checkpoint, save_checkpoint
from robprune.cli import main
from robprune.compose import compose
from robprune.data import build_data
from robprune.errors import ExportError
from robprune.export import export_run
from robprune.export.onnx_file import write_onnx
from robprune.export.qdq import input_qparams
from robprune.measure import dense_model
from robprune.pipeline import run
from robprune.quant import wrappers
from robprune.quant.quantizer import quantize, symmetric_scale
from robprune.stages.common import architecture
from tests.helpers import SHRINK
from tests.text_fixtures import tiny_bert, write_sst2

CLEAN = ["eval=clean" if o == "eval=pgd" else o for o in SHRINK if not o.startswith(("eval.attacks", "eval.n_examples"))]
FAST = ["eval.latency.repeats=2", "eval.latency.warmup=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Finished digits runs: pruned float (l1_filter 50%), and the same PTQ-quantised per tensor and per channel."""
    root = tmp_path_factory.mktemp("export_runs")
    common = [*CLEAN, "train.epochs=6", f"cache_dir={root / 'cache'}"]  # 6 epochs: a 2-epoch width-8 model sits so
    # close to its decision boundaries that INT8 rounding flips more than int8_check's 2% of its predictions
    out = {}
    for name, extra in (("pruned", []), ("ptq", ["quant=ptq"]), ("ptq_pc", ["quant=ptq", "quant.per_channel=true"]),
                        ("ptq4", ["quant=ptq", "quant.bits=4"])):
        run(compose([*common, *extra]), root / name)
        out[name] = root / name
    out["cache"] = root / "cache"
    return out


def _test_inputs(run_dir: Path, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = OmegaConf.load(run_dir / "config.yaml")
    data = build_data(cfg.dataset, cache_dir=None)
    return data.test_x[:n].float() / 255, data.test_y[:n]


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _standalone(script: str, tmp_path: Path) -> list:
    """Run ``script`` in a fresh interpreter that never imports robprune; it prints one JSON line."""
    guard = "\nimport sys, json\nassert not any(m.startswith('robprune') for m in sys.modules), 'robprune was imported'\n"
    res = subprocess.run([sys.executable, "-c", script + guard], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_onnx_through_the_command_runs_without_robprune_and_keeps_the_pruned_shapes(runs, tmp_path, capsys):
    run_dir, out = runs["pruned"], tmp_path / "onnx"
    before = _snapshot(run_dir)
    code = main(["export", str(run_dir), "--format", "onnx", "--out", str(out), "--n-check", "300", "--quiet",
                 f"cache_dir={runs['cache']}"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "export.json").read_text())
    assert record["passed"] and record["agreement"] >= 0.999 and record["n_checked"] == 300
    assert record["opset"] == 18 and record["file"] == "model.onnx" and record["size_bytes"] == (out / "model.onnx").stat().st_size
    assert record["input"]["shape"][0] == "batch" and record["latency_ms"] > 0 and record["latency_run_ms"] > 0
    assert record["versions"]["onnxruntime"] and "differ" in record["cpu_note"] and record["pruned"]
    assert _snapshot(run_dir) == before                                   # the run directory is never touched
    x, _ = _test_inputs(run_dir)
    np.save(tmp_path / "x.npy", x.numpy())
    got = _standalone(f"""
import numpy as np, onnxruntime as ort
s = ort.InferenceSession({str(out / 'model.onnx')!r}, providers=['CPUExecutionProvider'])
x = np.load('x.npy')
print(__import__('json').dumps([s.run(None, {{'input': x[:b]}})[0].argmax(1).tolist() for b in (64, 5)]))""", tmp_path)
    model, meta = load_checkpoint(run_dir)
    with torch.no_grad():
        want = model(x).argmax(1).tolist()
    assert got == [want, want[:5]]                                        # same predictions at two batch sizes
    weights = {i.name: list(i.dims) for i in onnx.load(str(out / "model.onnx")).graph.initializer}
    dense = dict(dense_model(meta["arch"]).named_modules())
    pruned = [(name, m) for name, m in model.named_modules()
              if isinstance(m, nn.Conv2d) and m.out_channels < dense[name].out_channels]
    assert pruned                                                         # the run cut channels ...
    for name, conv in pruned:                                             # ... and the file has the cut shapes
        assert weights[f"{name}.weight"] == list(conv.weight.shape)


def test_torchscript_runs_without_robprune(runs, tmp_path):
    run_dir, out = runs["pruned"], tmp_path / "ts"
    record = export_run(run_dir, "torchscript", out=out, n_check=200, overrides=[f"cache_dir={runs['cache']}"],
                        quiet=True)
    assert record["passed"] and record["agreement"] == 1.0 and record["traced"] == "float model"
    x, _ = _test_inputs(run_dir)
    torch.save(x, tmp_path / "x.pt")
    got = _standalone(f"""
import torch
m = torch.jit.load({str(out / 'model.torchscript.pt')!r})
x = torch.load('x.pt', weights_only=True)
with torch.no_grad():
    print(__import__('json').dumps([m(x[:b]).argmax(1).tolist() for b in (64, 3)]))""", tmp_path)
    model, _ = load_checkpoint(run_dir)
    with torch.no_grad():
        want = model(x).argmax(1).tolist()
    assert got == [want, want[:3]]


def _constants(graph) -> dict[str, np.ndarray]:
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


@pytest.mark.parametrize("name", ["ptq", "ptq_pc"])
def test_a_quantised_model_exports_as_qdq_with_robprune_s_own_scales(runs, tmp_path, name):
    run_dir, out = runs[name], tmp_path / name
    record = export_run(run_dir, "onnx", out=out, overrides=[f"cache_dir={runs['cache']}"], quiet=True)
    from robprune.quant.int8 import ACC_TOLERANCE, MIN_AGREEMENT

    assert record["passed"] and record["tolerance"] == {"acc": ACC_TOLERANCE, "agreement": MIN_AGREEMENT}
    assert record["graph"].startswith("QDQ") and record["quant"]["per_channel"] == (name == "ptq_pc")
    graph = onnx.load(str(out / "model.onnx")).graph
    values = _constants(graph)
    model, _ = load_checkpoint(run_dir)
    quantize_nodes = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantize_nodes) == len(wrappers(model))                   # one activation Q/DQ per Conv2d/Linear
    got = sorted((float(values[n.input[1]]), int(values[n.input[2]])) for n in quantize_nodes)
    want = sorted(input_qparams(w) for w in wrappers(model))
    assert got == want and all(values[n.input[2]].dtype == np.uint8 for n in quantize_nodes)
    names = {m: n for n, m in model.named_modules()}
    for w in wrappers(model):                                             # int8 weight codes and their scales
        weight = w.module.weight.detach()
        scale = symmetric_scale(weight, 8, per_channel=w.spec.per_channel)
        codes = values[f"{names[w]}.weight_int8"]
        assert codes.dtype == np.int8 and np.array_equal(codes, quantize(weight, scale, 0.0, -127, 127).numpy().astype(np.int8))
        dq = next(n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] == f"{names[w]}.weight_int8")
        assert np.allclose(values[dq.input[1]].reshape(-1), scale.reshape(-1).numpy(), rtol=0, atol=0)


def test_a_quantised_model_traces_as_its_int8_model(runs, tmp_path):
    record = export_run(runs["ptq"], "torchscript", out=tmp_path / "ts", overrides=[f"cache_dir={runs['cache']}"],
                        quiet=True)
    assert record["passed"] and record["traced"].startswith("INT8") and record["quantized_engine"]
    assert record["latency_pytorch_ms"] is None and record["latency_run_ms"] is not None  # the simulation is not timed
    four = export_run(runs["ptq4"], "torchscript", out=tmp_path / "ts4", overrides=[f"cache_dir={runs['cache']}"],
                      quiet=True)
    assert four["passed"] and four["traced"].startswith("fake-quant") and "4-bit" in four["note"]
    assert four["agreement"] == 1.0 and four["max_logit_diff"] == 0.0   # the simulation in plain ops, bit for bit


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A tiny BERT checkpoint with the config.yaml a run writes beside it (SST-2 layout, 40 dev sentences)."""
    root = tmp_path_factory.mktemp("export_text")
    data_dir = write_sst2(root / "sst2", n_train=40, n_dev=40)
    bert = tiny_bert(root / "bert", data_dir / "train.tsv")
    cfg = compose(["+experiment=text_sst2", f"data.root={data_dir}", f"model.pretrained={bert}", "dataset.train_split=train",
                   f"cache_dir={root / 'cache'}", "eval.latency.batch_size=4", *FAST])
    data = build_data(cfg.dataset, cache_dir=cfg.data.cache_dir)
    arch = architecture(cfg.model, data)
    run_dir = save_checkpoint(dense_model(arch), root / "run", arch=arch)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return run_dir, data


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_text_model_exports_with_dynamic_batch_and_sequence_axes(text_run, tmp_path, fmt):
    run_dir, data = text_run
    record = export_run(run_dir, fmt, out=tmp_path / fmt, n_check=40, quiet=True)
    assert record["passed"] and record["input"]["shape"] == ["batch", "sequence"] and record["input"]["dtype"] == "int64"
    model, _ = load_checkpoint(run_dir)
    file = tmp_path / fmt / record["file"]
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        assert [d for d in session.get_inputs()[0].shape] == ["batch", "sequence"]
        runner = lambda ids: torch.from_numpy(session.run(None, {"input": ids.numpy()})[0])  # noqa: E731
    else:
        runner = torch.jit.load(str(file))
    for batch, length in ((3, 5), (2, 9)):                               # two batch sizes, two sequence lengths
        ids = data.test_x[:batch, :length].long()
        with torch.no_grad():
            assert torch.allclose(runner(ids), model(ids), atol=1e-4)


# --- bad inputs: exit 2, one line naming the problem, nothing written -------------------------------------

def _bad_cases(runs, tmp_path):
    no_model = tmp_path / "no_model"
    no_model.mkdir()
    (no_model / "config.yaml").write_text((runs["pruned"] / "config.yaml").read_text())
    return {
        "no model": ([str(no_model), "--format", "onnx"], "no model to export"),
        "no such path": ([str(tmp_path / "nope"), "--format", "onnx"], "no such run directory"),
        "unknown format": ([str(runs["pruned"]), "--format", "tflite"], "choose one of onnx, torchscript"),
        "no format": ([str(runs["pruned"])], "needs --format onnx or --format torchscript"),
        "out inside the run": ([str(runs["pruned"]), "--format", "onnx", "--out", str(runs["pruned"] / "export")],
                               "never writes into a run directory"),
        "opset too old": ([str(runs["pruned"]), "--format", "onnx", "--opset", "13"], "--opset 13 is outside"),
        "4-bit to onnx": ([str(runs["ptq4"]), "--format", "onnx", f"cache_dir={runs['cache']}"], "quantised to 4 bits"),
    }


CASES = ["no model", "no such path", "unknown format", "no format", "out inside the run", "opset too old", "4-bit to onnx"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(runs, tmp_path, capsys, case):
    args, named = _bad_cases(runs, tmp_path)[case]
    out = tmp_path / "out"
    before = _snapshot(runs["pruned"])
    code = main(["export", *args, *([] if "--out" in args else ["--out", str(out)]), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert named in err and "Error: " in err, err
    assert not out.exists() and not (runs["pruned"] / "export").exists() and _snapshot(runs["pruned"]) == before


def test_missing_onnxruntime_says_what_to_install(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed: `import onnxruntime` fails
    code = main(["export", str(runs["pruned"]), "--format", "onnx", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == ("ExportError: --format onnx needs the packages onnx, onnxscript, onnxruntime "
                                 "(missing: onnxruntime); pip install robprune[export]")
    assert not (tmp_path / "out").exists()


class _CumMax(nn.Module):
    def forward(self, x):
        return torch.cummax(x, dim=1).values


def test_an_op_without_an_onnx_mapping_names_the_op_and_its_module(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), _CumMax()).eval()
    with pytest.raises(ExportError) as err:
        write_onnx(model, torch.rand(2, 4), tmp_path / "m.onnx", opset=18, axes={0: "batch"})
    text = str(err.value)
    assert "\n" not in text and "aten.cummax.default" in text and "module 2, a _CumMax" in text, text
    assert "--format torchscript" in text and not (tmp_path / "m.onnx").exists()
