"""A smaller CNN (one convolution) trained on the digits labels: an open-division entry."""
from tinytorch.benchmarking.tinymlperf import digits_student

NAME = "digits-small-cnn"
DIVISION = "open"
TASK = "digits"
CHECKPOINT = "../../runs/benchmark/checkpoints/digits--small_cnn.npz"   # written by `tito benchmark`
DESCRIPTION = "digits_student (one 3x3 convolution of 32 channels), float32, trained on the labels"


def build_model():
    return digits_student()
