"""A smaller CNN distilled from the digits reference (`distillation_loss`): an open-division entry."""
from tinytorch.benchmarking.tinymlperf import digits_student

NAME = "digits-distilled"
DIVISION = "open"
TASK = "digits"
CHECKPOINT = "../../runs/benchmark/checkpoints/digits--distilled.npz"   # written by `tito benchmark`
DESCRIPTION = ("digits_student (one 3x3 convolution of 32 channels), float32, trained on the reference's "
               "softened outputs: distillation_loss with T = 4, alpha = 0.9")


def build_model():
    return digits_student()
