"""The digits reference with 70% of its weights pruned (global magnitude), fine-tuned, then quantized to INT8."""
from tinytorch.benchmarking.tinymlperf import digits_cnn, int8_skeleton

NAME = "digits-pruned70-int8"
DIVISION = "open"      # pruning and fine-tuning change the weights: not allowed in the closed division
TASK = "digits"
CHECKPOINT = "../../runs/benchmark/checkpoints/digits--pruned_int8.npz"   # written by `tito benchmark`
DESCRIPTION = ("70% of the convolution and linear weights pruned by global magnitude, 3 epochs of fine-tuning "
               "with the masks kept, then per-channel INT8 (pruned weights are stored as int8 zeros)")


def build_model():
    return int8_skeleton(digits_cnn(), (1, 1, 8, 8), per_channel=True)
