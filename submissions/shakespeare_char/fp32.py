"""The shakespeare_char task's reference model in float32: the closed-division baseline every other entry is compared with."""
from tinytorch.benchmarking.tinymlperf import TASKS

NAME = "shakespeare_char-fp32"
DIVISION = "closed"
TASK = "shakespeare_char"
CHECKPOINT = "../../runs/benchmark/checkpoints/shakespeare_char--fp32.npz"   # written by `tito benchmark --task shakespeare_char`
DESCRIPTION = "the reference model, float32 weights and activations"


def build_model():
    return TASKS[TASK].reference()
