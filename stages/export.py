"""Stage export: each trained .keras model as a SavedModel serving probabilities."""

from __future__ import annotations

import argparse
from pathlib import Path

from mnist_cnn import io, serving
from mnist_cnn.model import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=Path, nargs="+", required=True, help=".keras files")
    parser.add_argument(
        "--out-dir", type=Path, required=True, help="gets one SavedModel per model, by file stem"
    )
    args = parser.parse_args()
    # Every input is checked before any export, so a bad one leaves the others untouched.
    for index, path in enumerate(args.models):
        serving.check_model_path(path)
        if path.is_dir():
            raise io.StageError(f"{path}: expected a .keras file, got a directory")
        if path.stem in (other.stem for other in args.models[:index]):
            raise io.StageError(f"{path}: a second model named {path.stem!r} for {args.out_dir}")
    for path in args.models:
        destination = args.out_dir / path.stem
        serving.export_model(load_model(path), destination)
        print(
            f"export {path.stem}: {destination} ({serving.SIGNATURE}: uint8 images -> "
            f"{serving.OUTPUT_NAME})",
            flush=True,
        )


if __name__ == "__main__":
    io.run(main)
