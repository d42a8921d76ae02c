"""The Fashion-MNIST LeNet after post-training INT8 quantization (`quantize_model`, per-channel weights)."""
from tinytorch.benchmarking.tinymlperf import fashion_lenet, int8_skeleton

NAME = "fashion_mnist-int8"
DIVISION = "closed"
TASK = "fashion_mnist"
CHECKPOINT = "../../runs/benchmark/checkpoints/fashion_mnist--int8.npz"   # written by `tito benchmark`
DESCRIPTION = ("static post-training INT8: per-channel int8 weights, int8 activations calibrated on "
               "500 training images, BatchNorm folded, ReLU fused, Dropout dropped")


def build_model():
    return int8_skeleton(fashion_lenet(), (1, 1, 28, 28), per_channel=True)
