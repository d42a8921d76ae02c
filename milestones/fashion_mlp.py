"""MLP on Fashion-MNIST (60,000 training and 10,000 test images): target 88% test accuracy."""
import sys

from _common import adam_trainer, options, run  # first: it sets the BLAS threads before NumPy loads

import numpy as np

from tinytorch.benchmarking.tinymlperf import FASHION_MEAN as MEAN, FASHION_STD as STD  # of the training pixels
from tinytorch.core.activations import ReLU
from tinytorch.core.layers import Linear, Sequential
from tinytorch.core.normalization import Dropout
from tinytorch.core.tensor import manual_seed
from tinytorch.data.loader import DataLoader, TensorDataset, load_fashion_mnist


def prepare(X: np.ndarray, flatten: bool) -> np.ndarray:
    "uint8 images (N, 28, 28) -> standardised float32, (N, 784) or (N, 1, 28, 28)."
    x = (X.astype(np.float32) / 255 - MEAN) / STD
    return x.reshape(len(X), -1) if flatten else x[:, None]


def check_stats(X_train: np.ndarray):
    "The constants above must be the training set's; say so if they are not (a different data set?)."
    x = X_train.astype(np.float32) / 255
    if abs(x.mean() - MEAN) > 1e-3 or abs(x.std() - STD) > 1e-3:
        raise SystemExit(f"fashion-mnist: training pixels have mean {x.mean():.4f} and std {x.std():.4f}, "
                         f"not {MEAN} and {STD}; is this Fashion-MNIST?")


def main() -> int:
    args = options(__doc__, epochs=15, batch_size=128, lr=1e-3)
    manual_seed(args.seed)
    X_train, y_train, X_test, y_test = load_fashion_mnist(args.root)
    check_stats(X_train)
    model = Sequential(Linear(784, 256), ReLU(), Dropout(0.2),
                       Linear(256, 128), ReLU(), Dropout(0.2), Linear(128, 10))
    train = DataLoader(TensorDataset(prepare(X_train, True), y_train), args.batch_size, shuffle=True, seed=args.seed)
    test = DataLoader(TensorDataset(prepare(X_test, True), y_test), 1000)
    trainer = adam_trainer(model, args, len(train), warmup=0.02)
    return run("fashion_mlp", trainer, train, test, args.epochs, target=0.88, out=args.out)


if __name__ == "__main__":
    sys.exit(main())
