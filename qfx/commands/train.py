"""``qfx train``: quantization-aware training of the digits MLP/CNN with learned binary points."""
from __future__ import annotations

import argparse
from pathlib import Path

from qfx.errors import BadInputError
from qfx.outdir import check_writable

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a fixed-point digits model (MLP or CNN) and save a checkpoint",
                       description="Quantization-aware training on sklearn's digits: float pre-training, conversion "
                       "to fixed point with calibrated binary points, then fine-tuning with learned binary points. "
                       "Prints the exact-mode (integer) test accuracy.")
    p.add_argument("--model", choices=("mlp", "cnn"), default="cnn", help="model kind (default: cnn)")
    p.add_argument("--bits", type=int, default=8, help="width W of weights, activations, BN scale/shift, adds (bias 2W)")
    p.add_argument("--khot", type=int, default=None, help="K-hot weights: at most K signed power-of-two terms")
    p.add_argument("--epochs", type=int, default=30, help="fixed-point training epochs (default 30)")
    p.add_argument("--float-epochs", type=int, default=20, help="float pre-training epochs (default 20)")
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--lr", type=float, default=2e-3, help="fixed-point learning rate (default 2e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("-o", "--output", required=True, help="checkpoint path (.pt)")
    p.add_argument("--force", action="store_true", help="replace an existing checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.epilog = "example: qfx train --model cnn --bits 8 -o cnn8.pt"
    return p


def _check_args(args: argparse.Namespace) -> None:
    """Everything that would fail after minutes of training fails now, in one line."""
    from qfx.nn.quant import MAX_TRAIN_WIDTH

    if not 2 <= args.bits <= MAX_TRAIN_WIDTH // 2:
        raise BadInputError(f"--bits must be in 2..{MAX_TRAIN_WIDTH // 2} (biases get 2*bits and train mode carries "
                            f"at most {MAX_TRAIN_WIDTH} bits), got {args.bits}")
    if args.khot is not None and not 1 <= args.khot <= args.bits:
        raise BadInputError(f"--khot must be in 1..{args.bits} (at most K power-of-two terms per weight; leave it out "
                            f"for plain weights), got {args.khot}")
    if args.epochs < 0 or args.float_epochs < 0 or args.batch < 1 or not args.lr > 0:
        raise BadInputError("--epochs and --float-epochs must be >= 0, --batch >= 1 and --lr > 0")
    if args.threads is not None and args.threads < 1:
        raise BadInputError(f"--threads must be >= 1, got {args.threads}")
    check_writable(args.output, args.force)


def run(args: argparse.Namespace) -> int:
    from qfx.nn.train import save_checkpoint, train_model

    _check_args(args)  # fail before spending minutes training
    out = Path(args.output)
    res = train_model(args.model, bits=args.bits, khot=args.khot, epochs=args.epochs, batch=args.batch, lr=args.lr,
                      seed=args.seed, float_epochs=args.float_epochs, quiet=args.quiet, threads=args.threads)
    path = save_checkpoint(res, out, force=args.force)
    fl = f", float {100 * res.float_accuracy:.2f} %" if res.float_accuracy is not None else ""
    print(f"test accuracy {100 * res.accuracy:.2f} % (exact fixed point){fl}; train-mode "
          f"{100 * res.train_mode_accuracy:.2f} %; {res.seconds:.0f} s; saved {path}")
    return 0
