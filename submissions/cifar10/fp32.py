"""The cifar10 task's reference model in float32: the closed-division baseline every other entry is compared with."""
from tinytorch.benchmarking.tinymlperf import TASKS

NAME = "cifar10-fp32"
DIVISION = "closed"
TASK = "cifar10"
CHECKPOINT = "../../runs/benchmark/checkpoints/cifar10--fp32.npz"   # written by `tito benchmark --task cifar10`
DESCRIPTION = "the reference model, float32 weights and activations"


def build_model():
    return TASKS[TASK].reference()
