"""Integer inference speed: the int8 LeNet against float32, its layers one by one, and a memory-bound Linear at
batch 1, each against PyTorch's int8 (fbgemm/x86 engine) and float32 when PyTorch is installed.

Run: .venv/bin/python benchmarks/bench_quant.py [--rounds N] [--batch N]

Protocol: one BLAS thread on every side (set in the environment before NumPy is imported; `torch.set_num_threads(1)`);
the candidates alternate within each round (`tinytorch.utils.timing.compare`); each figure is the median over rounds
of the mean time of a batch of calls after a warm-up; ratios come from the same rounds. Before timing, our integer
outputs are compared with PyTorch's on the same integers (7-bit inputs, since fbgemm can saturate its 16-bit sums of
pairs of uint8 x int8 products on full-range inputs): the largest difference in output levels is printed.
Target (issue 17): the int8 LeNet's forward at most 1.25x the float32 LeNet's. The weights come from
runs/fashion_lenet.npz when it exists, otherwise from a seeded initialisation (speed does not depend on them).
"""
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from tinytorch.benchmarking.tinymlperf import TASKS, fashion_lenet as lenet  # noqa: E402  (the milestone's model)
from tinytorch.core.training import load_checkpoint  # noqa: E402

from tinytorch.core.autograd import no_grad  # noqa: E402
from tinytorch.core.layers import Linear  # noqa: E402
from tinytorch.core.spatial import Conv2d, max_pool2d  # noqa: E402
from tinytorch.core.tensor import Tensor, manual_seed  # noqa: E402
from tinytorch.optimization.quantization import (  # noqa: E402
    DynamicQuantizedLinear, Int4WeightOnlyLinear, QuantizedConv2d, QuantizedLinear, QuantizedTensor,
    _fold_and_group, _layers, quantize_model)
from tinytorch.utils.timing import compare, fmt_seconds, machine_info  # noqa: E402

# deprecation notices
warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\..*")
# the tables mark them UNSTABLE
warnings.filterwarnings("ignore", message="compare: unstable")
warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated")
try:
    import torch  # noqa: E402
    import torch.ao.nn.quantized as nnq  # noqa: E402
    import torch.ao.nn.quantized.dynamic as nnqd  # noqa: E402
    torch.set_num_threads(1)
    engines = torch.backends.quantized.supported_engines
    torch.backends.quantized.engine = "fbgemm" if "fbgemm" in engines else "x86"
except ImportError:  # the PyTorch columns are optional
    torch = None


def report(title: str, c, base: str):
    print(f"\n{title}")
    print(c.table(base))


def model_bench(rounds: int, batch: int):
    "Whole LeNet: float32 forward against the int8 model (float in, float out), same inputs."
    path = Path("runs") / TASKS["fashion_mnist"].checkpoint
    if path.exists():
        model, src = lenet(), str(path)
        load_checkpoint(path, model)
        model.eval()
    else:
        manual_seed(0); model, src = lenet().eval(), "seeded initialisation (no checkpoint)"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, 28, 28), dtype=np.float32)
    qmodel = quantize_model(model, [x[:128]])
    xt = Tensor(x)
    print(f"LeNet ({src}), batch {batch}")
    with no_grad():
        c = compare({"float32": lambda: model(xt), "int8": lambda: qmodel(xt)}, rounds=rounds)
    report("whole model, forward", c, "float32")
    ratio = c.ratio("int8", "float32")
    print(f"int8 / float32 = {ratio:.2f} (target <= 1.25: {'met' if ratio <= 1.25 else 'NOT met'})")
    return model, qmodel, x


def torch_linear(lin: Linear, ql: QuantizedLinear):
    "PyTorch's int8 Linear with our integer weight and scales, and our output scale and zero point (+128: quint8)."
    m = nnq.Linear(lin.in_features, lin.out_features, dtype=torch.qint8)
    m.set_weight_bias(torch_weight(ql), torch.from_numpy(lin.bias.data))
    m.scale, m.zero_point = ql.scale, ql.zero_point + 128
    return m


def torch_conv(conv: Conv2d, qc: QuantizedConv2d):
    m = nnq.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                   padding=conv.padding)
    m.set_weight_bias(torch_weight(qc), torch.from_numpy(conv.bias.data))
    m.scale, m.zero_point = qc.scale, qc.zero_point + 128
    return m


def torch_weight(q):
    "Our per-channel int8 weight as a PyTorch qint8 tensor with the same integers."
    w = q.weight
    t = torch._make_per_channel_quantized_tensor(torch.from_numpy(w.int_repr().copy()),
                                                 torch.from_numpy(w.scale.astype(np.float64)),
                                                 torch.zeros(len(w.scale), dtype=torch.int64), 0)
    assert np.array_equal(t.int_repr().numpy(), w.int_repr())
    return t


def layer_bench(model, qmodel, x, rounds: int):
    "Each compute layer of the int8 LeNet (int8 in, int8 out) against its float layer, and PyTorch's of each."
    groups = [m for k, m, _ in _fold_and_group(_layers(model)) if k == "compute"]
    qlayers = [m for m in qmodel if isinstance(m, (QuantizedConv2d, QuantizedLinear))]
    h = Tensor(x)
    rng = np.random.default_rng(1)
    for f, q in zip(groups, qlayers):
        if isinstance(f, Linear) and h.ndim > 2: h = h.reshape(h.shape[0], -1)
        xs = h.data
        sx, zx = float(q.input_scale.data), int(q.input_zero_point.data)
        qx = QuantizedTensor(np.clip(np.rint(xs / sx) + zx, -128, 127).astype(np.int8), sx, zx)
        with no_grad():
            cands = {"float32 (ours)": lambda: f(h), "int8 (ours)": lambda: q(qx)}
            if torch is not None:
                tq = torch_linear(f, q) if isinstance(f, Linear) else torch_conv(f, q)
                # the check: PyTorch's uint8 u is our int8 u - 128; 7-bit u in [0, 127] keeps fbgemm's pair sums exact
                u = rng.integers(0, 128, qx.shape).astype(np.uint8)
                tu = torch._make_per_tensor_quantized_tensor(torch.from_numpy(u), sx, zx + 128)
                q7 = QuantizedTensor((u.astype(np.int16) - 128).astype(np.int8), sx, zx)
                ours7 = q(q7).int_repr()
                theirs7 = tq(tu).int_repr().numpy().astype(np.int16) - 128
                diff = int(np.abs(ours7.astype(np.int16) - theirs7).max())
                tx = torch.quantize_per_tensor(torch.from_numpy(qx.dequantize()), sx, zx + 128,
                                               torch.quint8)
                tfx = torch.from_numpy(xs)
                if isinstance(f, Linear):
                    tf = torch.nn.Linear(f.in_features, f.out_features)
                else:
                    tf = torch.nn.Conv2d(f.in_channels, f.out_channels, f.kernel_size, f.stride,
                                         f.padding)
                with torch.no_grad():
                    tf.weight.copy_(torch.from_numpy(f.weight.data)); tf.bias.copy_(torch.from_numpy(f.bias.data))
                cands["float32 (torch)"] = lambda: tf(tfx)
                cands["int8 (torch fbgemm)"] = lambda: tq(tx)
            c = compare(cands, rounds=rounds)
        name = (f"Linear({f.in_features}, {f.out_features})" if isinstance(f, Linear) else
                f"Conv2d({f.in_channels}, {f.out_channels}, {f.kernel_size}, padding={f.padding})") + f", input {xs.shape}"
        report(name, c, "float32 (ours)")
        if torch is not None:
            print(f"  integer outputs against PyTorch's on 7-bit inputs: largest difference {diff} "
                  "level(s)")
        with no_grad():                          # the next layer's input: as in lenet(), ReLU, and pooling after a conv
            h = f(h)
            if q.relu: h = Tensor(np.maximum(h.data, 0))
            if isinstance(f, Conv2d): h = max_pool2d(h, 2)


def memory_bound_bench(rounds: int):
    "A GPT-sized Linear(512, 2048) at batch 1: float32, dynamic int8, 4-bit weight-only, and PyTorch's."
    manual_seed(0)
    lin = Linear(512, 2048)
    x = Tensor(np.random.default_rng(2).standard_normal((1, 512), dtype=np.float32))
    dyn, q4 = DynamicQuantizedLinear(lin), Int4WeightOnlyLinear(lin)
    with no_grad():
        cands = {"float32 (ours)": lambda: lin(x), "dynamic int8 (ours)": lambda: dyn(x),
                 "4-bit weights (ours)": lambda: q4(x)}
        if torch is not None:
            tl = torch.nn.Linear(512, 2048)
            with torch.no_grad():
                tl.weight.copy_(torch.from_numpy(lin.weight.data)); tl.bias.copy_(torch.from_numpy(lin.bias.data))
            td = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(tl), {torch.nn.Linear},
                                                        dtype=torch.qint8)
            tx = torch.from_numpy(x.data)
            cands["float32 (torch)"] = lambda: tl(tx)
            cands["dynamic int8 (torch)"] = lambda: td(tx)
        c = compare(cands, rounds=rounds)
    report("Linear(512, 2048) at batch 1 (memory-bound: 2 FLOPs per weight read)", c,
           "float32 (ours)")
    print(f"  weight bytes: float32 {lin.weight.data.nbytes:,}, int8 "
          f"{dyn.weight_int8.data.nbytes + dyn.weight_scale.data.nbytes:,}, "
          f"4-bit {q4.weight_nbytes:,}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=9,
                    help="alternating rounds per candidate (default 9)")
    ap.add_argument("--batch", type=int, default=256,
                    help="images per forward pass of the LeNet (default 256)")
    args = ap.parse_args()
    info = machine_info()
    print(f"bench_quant: {info}; 1 BLAS thread; torch "
          f"{torch.__version__ if torch else 'not installed'}"
          + (f", engine {torch.backends.quantized.engine}" if torch else "") + f"; load average {os.getloadavg()[0]:.2f}")
    model, qmodel, x = model_bench(args.rounds, args.batch)
    layer_bench(model, qmodel, x, args.rounds)
    memory_bound_bench(args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
