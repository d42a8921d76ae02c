"""LeNet-style CNN on Fashion-MNIST: target 91% test accuracy in under 10 minutes of training on 2 cores."""
import sys
from pathlib import Path

from _common import adam_trainer, options, run  # first: it sets the BLAS threads before NumPy loads
from fashion_mlp import check_stats, prepare

from tinytorch.benchmarking.tinymlperf import TASKS, fashion_lenet as lenet  # the benchmark's reference model
from tinytorch.core.layers import Sequential
from tinytorch.core.tensor import manual_seed
from tinytorch.core.training import load_checkpoint, save_checkpoint
from tinytorch.data.loader import DataLoader, TensorDataset, load_fashion_mnist


CHECKPOINT = TASKS["fashion_mnist"].checkpoint  # written under --out; quantize_fashion and compress_fashion start from it


def load_lenet(path) -> Sequential:
    "The trained LeNet saved by this script at `path`, in evaluation mode."
    model = lenet()
    load_checkpoint(path, model)
    return model.eval()


def main() -> int:
    args = options(__doc__, epochs=10, batch_size=128, lr=2e-3)
    manual_seed(args.seed)
    X_train, y_train, X_test, y_test = load_fashion_mnist(args.root)
    check_stats(X_train)
    model = lenet()
    train = DataLoader(TensorDataset(prepare(X_train, False), y_train), args.batch_size, shuffle=True, seed=args.seed)
    test = DataLoader(TensorDataset(prepare(X_test, False), y_test), 1000)
    trainer = adam_trainer(model, args, len(train), warmup=0.02)
    code = run("fashion_lenet", trainer, train, test, args.epochs, target=0.91, out=args.out, time_limit=600)
    path = save_checkpoint(Path(args.out) / CHECKPOINT, model, epoch=args.epochs, seed=args.seed,
                           test_accuracy=trainer.history["val_acc"][-1])
    print(f"fashion_lenet: checkpoint {path}")
    return code


if __name__ == "__main__":
    sys.exit(main())
