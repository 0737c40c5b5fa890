"""`python -m commands.predict`: digits from image files, MNIST's way, and one-line errors."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.special import softmax

from mnist_cnn import digits, serving
from tests.conftest import ROOT
from tests.test_digits import as_photo, drawn

LINE = re.compile(
    r"^(?P<name>.+): (?P<digit>\d) \((?P<percent>[<>]?[\d.]+%)\); top 3: (?P<top>.+)$"
)
# Runs the command in-process in a child and says on stderr whether TensorFlow got loaded.
WRAPPER = """
import runpy, sys
sys.argv = ["predict", *sys.argv[1:]]
try:
    runpy.run_module("commands.predict", run_name="__main__")
finally:
    print(f"tensorflow loaded: {'tensorflow' in sys.modules}", file=sys.stderr)
"""


def predict(*args: str | Path, wrapped: bool = False) -> subprocess.CompletedProcess:
    head = ["-c", WRAPPER] if wrapped else ["-m", "commands.predict"]
    return subprocess.run(
        [sys.executable, *head, *map(str, args)], cwd=ROOT, capture_output=True, text=True
    )


def parse(stdout: str) -> dict[str, tuple[int, float, list[int]]]:
    """{image: (digit, its percentage, top-3 digits)} from the command's output lines."""
    parsed = {}
    for line in stdout.splitlines():
        match = LINE.match(line)
        assert match, f"unexpected output line: {line!r}"
        top = [int(entry.split()[0]) for entry in match["top"].split(", ")]
        percent = float(match["percent"].strip("<>%"))
        parsed[match["name"]] = (int(match["digit"]), percent, top)
    return parsed


def assert_classified_as(stdout: str, expected: dict[str, np.ndarray]) -> None:
    """Each of `expected`'s images got the line its probabilities call for, in that order."""
    parsed = parse(stdout)
    assert list(parsed) == list(expected)
    for name, probabilities in expected.items():
        digit, percent, top = parsed[name]
        ranked = np.argsort(-probabilities, kind="stable")[:3].tolist()
        assert (digit, top) == (ranked[0], ranked), name
        # Two decimals are printed, and values beyond 0.01 % and 99.99 % are clamped there.
        shown = min(max(100 * probabilities[digit], 0.01), 99.99)
        assert abs(percent - shown) <= 0.006, name


def test_help_says_what_it_does_without_loading_tensorflow():
    result = predict("--help", wrapped=True)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for words in ("MODEL IMAGE [IMAGE ...]", "MNIST", "20x20", "centre of mass", "top three"):
        assert words in text
    assert "tensorflow loaded: False" in result.stderr


def test_model_paths_that_are_not_models_fail_before_tensorflow_loads(tmp_path):
    cv2.imwrite(str(tmp_path / "digit.png"), drawn("3"))
    (tmp_path / "text.keras").write_text("weights\n")
    with zipfile.ZipFile(tmp_path / "other.keras", "w") as archive:
        archive.writestr("readme.txt", "not a model")
    (tmp_path / "export").mkdir()
    cases = {
        "missing.keras": "no such model file or directory",
        "text.keras": "not a model (neither a .keras zip archive nor a SavedModel)",
        "other.keras": "a zip archive but not a Keras model (no config.json)",
        "export": "not a SavedModel directory (no saved_model.pb in it)",
    }
    for name, reason in cases.items():
        result = predict(tmp_path / name, tmp_path / "digit.png", wrapped=True)
        assert result.returncode == 1
        error, loaded = result.stderr.strip().splitlines()
        assert error == f"error: {tmp_path / name}: {reason}"
        assert loaded == "tensorflow loaded: False"
        assert result.stdout == ""


def softmax_of(model, images: np.ndarray) -> np.ndarray:
    """The model's probabilities computed here, independently of `serving`."""
    return softmax(model.predict(images, verbose=0).astype(np.float64), axis=1)


@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory) -> tuple[Path, object]:
    """A baseline with its initial weights (probabilities spread over the classes), saved."""
    from mnist_cnn.model import build_model, save_model

    path = tmp_path_factory.mktemp("untrained") / "baseline.keras"
    model = build_model(
        regularized=False,
        dropout_rate=0.5,
        dropout_after_first_pool=False,
        batch_norm_momentum=0.9,
        fused_batch_norm=False,
    )
    save_model(model, path)
    return path, model


def test_bad_images_are_reported_and_the_good_ones_still_classified(untrained_model, tmp_path):
    good = [tmp_path / "four.png", tmp_path / "eight.jpg"]
    cv2.imwrite(str(good[0]), drawn("4"))
    as_photo(cv2.resize(drawn("8"), (25, 30), interpolation=cv2.INTER_AREA), good[1])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.png").write_text("a shopping list\n")
    cv2.imwrite(str(tmp_path / "blank.png"), np.zeros((64, 64), np.uint8))
    bad = {
        tmp_path / "missing.png": "no such file",
        tmp_path / "empty.jpg": "empty file",
        tmp_path / "notes.png": "not an image",
        tmp_path / "blank.png": "no digit found",
    }
    order = [good[0], *bad, good[1]]
    result = predict(untrained_model[0], *order)
    assert result.returncode == 1
    # Each bad image's line comes first, before TensorFlow loads and logs; then the summary.
    stderr = result.stderr.strip().splitlines()
    for (path, reason), line in zip(bad.items(), stderr[:4], strict=True):
        assert line.startswith(f"error: {path}: {reason}")
    assert [line for line in stderr if line.startswith("error:")][4:] == [
        "error: 4 of 6 images could not be classified"
    ]
    assert stderr[-1] == "error: 4 of 6 images could not be classified"
    # The good images' lines, with the probabilities this process computes for the same model.
    images = np.stack([digits.load_digit(path) for path in good])
    probabilities = softmax_of(untrained_model[1], images)
    assert_classified_as(result.stdout, dict(zip(map(str, good), probabilities, strict=True)))
    # Not a trained model: probabilities far from 0 and 1, so every printed digit counts.
    assert probabilities.max() < 0.5


# Real MNIST digits: a model trained one epoch, the raw test digits and photos of them.


def read_mnist(mirror: Path, prefix: str, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    from stages.split import read_images, read_labels

    arrays = []
    for kind, reader in (("images-idx3", read_images), ("labels-idx1", read_labels)):
        name = f"{prefix}-{kind}-ubyte"
        (folder / name).write_bytes(gzip.decompress((mirror / f"{name}.gz").read_bytes()))
        arrays.append(reader(folder / name))
    return arrays[0], arrays[1]


@pytest.fixture(scope="module")
def mnist(tmp_path_factory) -> dict:
    mirror = os.environ.get("MNIST_MIRROR")
    if not mirror or not Path(mirror).is_dir():
        pytest.skip("MNIST_MIRROR is not set to a folder of MNIST's .gz IDX files")
    from mnist_cnn import training
    from mnist_cnn.model import save_model
    from mnist_cnn.params import TrainConfig

    folder = tmp_path_factory.mktemp("mnist")
    train_images, train_labels = read_mnist(Path(mirror), "train", folder)
    test_images, test_labels = read_mnist(Path(mirror), "t10k", folder)
    config = TrainConfig.load(ROOT / "params.yaml").replace(epochs=1)
    # All 60,000 training digits for one epoch (about 15 s on two cores): a model sure of
    # hundreds of test digits of every class.
    model, _ = training.run(
        config, regularized=False, train=(train_images, train_labels), validation=None, verbose=0
    )
    save_model(model, folder / "baseline.keras")
    serving.export_model(model, folder / "export" / "baseline")
    return {
        "folder": folder,
        "keras": folder / "baseline.keras",
        "export": folder / "export" / "baseline",
        "test_images": test_images,
        "test_labels": test_labels,
        "probabilities": softmax_of(model, test_images),
    }


@pytest.fixture(scope="module")
def mnist_files(mnist) -> dict:
    """Two confidently classified test digits per class, as PNG (as-is) and as photos."""
    probabilities = mnist["probabilities"]
    predicted = probabilities.argmax(axis=1)
    # Confident and right: each file shows the digit it is labelled with.
    good = (probabilities.max(axis=1) > 0.99) & (predicted == mnist["test_labels"])
    chosen = [
        index for digit in range(10) for index in np.flatnonzero(good & (predicted == digit))[:2]
    ]
    assert len(chosen) == 20
    folder = mnist["folder"] / "images"
    folder.mkdir()
    expected, raw = {}, {}
    for number, index in enumerate(chosen):
        image = mnist["test_images"][index]
        png = folder / f"t10k-{index}.png"
        cv2.imwrite(str(png), image)
        photo = as_photo(image, folder / f"t10k-{index}-photo.jpg", at=(10 + number, 150 + number))
        expected[str(png)] = expected[str(photo)] = int(predicted[index])
        raw[str(png)] = probabilities[index]
    return {"expected": expected, "raw": raw}


@pytest.fixture(scope="module")
def keras_run(mnist, mnist_files) -> subprocess.CompletedProcess:
    return predict(mnist["keras"], *mnist_files["expected"])


def test_predicts_real_digits_as_the_model_does_on_the_raw_arrays(mnist_files, keras_run):
    assert keras_run.returncode == 0, keras_run.stderr
    parsed = parse(keras_run.stdout)
    assert {name: digit for name, (digit, _, _) in parsed.items()} == mnist_files["expected"]
    # MNIST's digits are already normalised: most come back unchanged, with the same line as
    # their raw arrays get.
    unchanged = {
        name: probabilities
        for name, probabilities in mnist_files["raw"].items()
        if np.array_equal(digits.load_digit(Path(name)), cv2.imread(name, cv2.IMREAD_GRAYSCALE))
    }
    assert len(unchanged) >= len(mnist_files["raw"]) // 2
    lines = [line for line in keras_run.stdout.splitlines() if line.split(": ")[0] in unchanged]
    assert_classified_as("\n".join(lines), unchanged)


def test_the_export_directory_works_as_the_model(mnist, mnist_files, keras_run):
    result = predict(mnist["export"], *mnist_files["expected"])
    assert result.returncode == 0, result.stderr
    from_export, from_keras = parse(result.stdout), parse(keras_run.stdout)
    assert list(from_export) == list(from_keras)
    # float32 probabilities against float64 ones: the same digit and percentage; the tiny
    # runners-up may tie at float32's underflow, so their order is not compared.
    for name, (digit, percent, _) in from_export.items():
        assert digit == from_keras[name][0], name
        assert abs(percent - from_keras[name][1]) <= 0.011, name
