"""The digits task's reference model in float32: the closed-division baseline every other entry is compared with."""
from tinytorch.benchmarking.tinymlperf import TASKS

NAME = "digits-fp32"
DIVISION = "closed"
TASK = "digits"
CHECKPOINT = "../../runs/benchmark/checkpoints/digits--fp32.npz"   # written by `tito benchmark --task digits`
DESCRIPTION = "the reference model, float32 weights and activations"


def build_model():
    return TASKS[TASK].reference()
