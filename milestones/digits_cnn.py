"""CNN on the 1,797 8x8 handwritten digits shipped with the package: target 97% test accuracy in under a minute."""
import sys

from _common import adam_trainer, options, run  # first: it sets the BLAS threads before NumPy loads

from tinytorch.core.activations import ReLU
from tinytorch.core.layers import Linear, Sequential
from tinytorch.core.spatial import Conv2d, Flatten, MaxPool2d
from tinytorch.core.tensor import manual_seed
from tinytorch.data.loader import DataLoader, TensorDataset, load_digits


def main() -> int:
    args = options(__doc__, epochs=12, batch_size=32, lr=3e-3)
    manual_seed(args.seed)
    X_train, y_train, X_test, y_test = load_digits()                                 # (N, 1, 8, 8) in [0, 1]
    model = Sequential(Conv2d(1, 16, 3, padding=1), ReLU(),                          # (N, 16, 8, 8)
                       Conv2d(16, 32, 3, padding=1), ReLU(), MaxPool2d(2),           # (N, 32, 4, 4)
                       Flatten(), Linear(32 * 4 * 4, 64), ReLU(), Linear(64, 10))   # (N, 10)
    train = DataLoader(TensorDataset(X_train, y_train), args.batch_size, shuffle=True, seed=args.seed)
    test = DataLoader(TensorDataset(X_test, y_test), 256)
    trainer = adam_trainer(model, args, len(train), warmup=0.05)
    return run("digits_cnn", trainer, train, test, args.epochs, target=0.97, out=args.out, time_limit=60)


if __name__ == "__main__":
    sys.exit(main())
