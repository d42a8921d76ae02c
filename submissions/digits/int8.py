"""The digits reference after post-training INT8 quantization (`quantize_model`, per-channel weights)."""
from tinytorch.benchmarking.tinymlperf import digits_cnn, int8_skeleton

NAME = "digits-int8"
DIVISION = "closed"
TASK = "digits"
CHECKPOINT = "../../runs/benchmark/checkpoints/digits--int8.npz"   # written by `tito benchmark`
DESCRIPTION = ("static post-training INT8: per-channel int8 weights, int8 activations calibrated on "
               "200 training images, BatchNorm folded and ReLU fused")


def build_model():
    return int8_skeleton(digits_cnn(), (1, 1, 8, 8), per_channel=True)
