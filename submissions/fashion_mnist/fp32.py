"""The fashion_mnist task's reference model in float32: the closed-division baseline every other entry is compared with."""
from tinytorch.benchmarking.tinymlperf import TASKS

NAME = "fashion_mnist-fp32"
DIVISION = "closed"
TASK = "fashion_mnist"
CHECKPOINT = "../../runs/benchmark/checkpoints/fashion_mnist--fp32.npz"   # written by `tito benchmark --task fashion_mnist`
DESCRIPTION = "the reference model, float32 weights and activations"


def build_model():
    return TASKS[TASK].reference()
