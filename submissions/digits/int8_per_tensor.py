"""The digits reference quantized to INT8 with one scale per weight tensor: a deliberately weaker closed entry."""
from tinytorch.benchmarking.tinymlperf import digits_cnn, int8_skeleton

NAME = "digits-int8-per-tensor"
DIVISION = "closed"
TASK = "digits"
CHECKPOINT = "../../runs/benchmark/checkpoints/digits--int8_per_tensor.npz"   # written by `tito benchmark`
DESCRIPTION = ("static post-training INT8 with one scale per weight tensor instead of per output channel; "
               "activations calibrated on 200 training images")


def build_model():
    return int8_skeleton(digits_cnn(), (1, 1, 8, 8), per_channel=False)
