"""CNN on CIFAR-10 (binary version): target 70% test accuracy where the data is available."""
import sys

from _common import adam_trainer, options, run  # first: it sets the BLAS threads before NumPy loads

import numpy as np

from tinytorch.core.activations import ReLU
from tinytorch.core.layers import Linear, Sequential
from tinytorch.core.normalization import BatchNorm2d, Dropout
from tinytorch.core.spatial import Conv2d, Flatten, MaxPool2d
from tinytorch.core.tensor import manual_seed
from tinytorch.data.loader import (Compose, DataLoader, RandomCrop, RandomHorizontalFlip, TensorDataset,
                                   load_cifar10)


def block(c_in: int, c_out: int) -> list:
    "Two 3x3 convolutions with BatchNorm and ReLU, then 2x2 max-pooling: halves height and width."
    return [Conv2d(c_in, c_out, 3, padding=1), BatchNorm2d(c_out), ReLU(),
            Conv2d(c_out, c_out, 3, padding=1), BatchNorm2d(c_out), ReLU(), MaxPool2d(2)]


def main() -> int:
    args = options(__doc__, epochs=15, batch_size=128, lr=2e-3)
    manual_seed(args.seed)
    try:
        X_train, y_train, X_test, y_test = load_cifar10(args.root)
    except (FileNotFoundError, OSError, ValueError) as e:
        print(f"cifar10_cnn: not run, the data is not here: {e}", file=sys.stderr)   # says where to put it
        return 2
    mean = X_train.mean(axis=(0, 2, 3), keepdims=True) / 255
    std = X_train.std(axis=(0, 2, 3), keepdims=True) / 255
    prep = lambda X: ((X.astype(np.float32) / 255 - mean) / std).astype(np.float32)   # (N, 3, 32, 32)
    augment = Compose([RandomCrop(32, padding=4, seed=args.seed), RandomHorizontalFlip(seed=args.seed)])
    model = Sequential(*block(3, 32), *block(32, 64), *block(64, 128),               # (N, 128, 4, 4)
                       Flatten(), Dropout(0.3), Linear(128 * 4 * 4, 10))
    train = DataLoader(TensorDataset(prep(X_train), y_train), args.batch_size, shuffle=True, seed=args.seed,
                       transform=augment)
    test = DataLoader(TensorDataset(prep(X_test), y_test), 500)
    trainer = adam_trainer(model, args, len(train), warmup=0.02)
    return run("cifar10_cnn", trainer, train, test, args.epochs, target=0.70, out=args.out)


if __name__ == "__main__":
    sys.exit(main())
