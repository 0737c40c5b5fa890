"""Classify photos or scans of handwritten digits with a trained model: `--help` says how."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

# mnist_cnn first: it sets TensorFlow's environment. TensorFlow itself loads only after every
# input is checked, so their errors come before its start-up log instead of buried in it.
from mnist_cnn import digits, io, serving

TOP = 3
DESCRIPTION = """\
Classify photos or scans of handwritten digits with a trained model.

Each IMAGE (PNG or JPEG, any size, grey or colour; dark ink on light paper or a light digit on
dark) becomes a 28x28 digit the way MNIST's were made: grey, light on dark, cropped to the ink,
scaled to fit 20x20 keeping its aspect ratio, placed by its centre of mass. For each image it
prints the predicted digit, its probability and the top three, e.g.

  photo.jpg: 7 (99.87%); top 3: 7 99.87%, 1 0.08%, 9 0.03%

MODEL is a .keras file (models/*.keras) or a SavedModel export directory (models/export/*).
An image that cannot be read is reported on its own line and the others are still classified;
the exit status is then 1.
"""


def percent(probability: float) -> str:
    """A probability as a percentage with two decimals, never rounded to 0 % or 100 %."""
    if probability < 0.0001:
        return "<0.01%"
    if probability > 0.9999:
        return ">99.99%"
    return f"{probability:.2%}"


def describe(name: str, probabilities: np.ndarray) -> str:
    """One output line: the most likely digit, its probability and the top three."""
    ranked = np.argsort(-probabilities, kind="stable")[:TOP]
    top = ", ".join(f"{digit} {percent(probabilities[digit])}" for digit in ranked)
    return f"{name}: {ranked[0]} ({percent(probabilities[ranked[0]])}); top {TOP}: {top}"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m commands.predict",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", type=Path, metavar="MODEL", help=".keras file or export directory")
    parser.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="PNG or JPEG file")
    args = parser.parse_args()
    serving.check_model_path(args.model)
    names, images, failures = [], [], 0
    for path in args.images:
        try:
            images.append(digits.load_digit(path))
            names.append(str(path))
        except digits.ImageError as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            failures += 1
    if images:
        probabilities = serving.load_classifier(args.model)(np.stack(images))
        for name, row in zip(names, probabilities, strict=True):
            print(describe(name, row), flush=True)
    if failures:
        raise io.StageError(f"{failures} of {len(args.images)} images could not be classified")


if __name__ == "__main__":
    io.run(main)
