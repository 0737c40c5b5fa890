"""The export stage: SavedModels that serve probabilities, byte-reproducible, written atomically."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.special import softmax

from mnist_cnn import serving, training
from mnist_cnn.model import build_model, load_model, save_model
from mnist_cnn.params import TrainConfig
from tests.conftest import ROOT, synthetic_digits

# float32 softmax in the SavedModel against float64 softmax of the Keras model's float32 logits,
# with TensorFlow's default oneDNN setting in the loader and the project's in the test. The
# largest difference measured on MNIST's 10,000 test digits was 1.9e-7.
TOLERANCE = 1e-5

# Runs in a fresh interpreter, isolated (-I) from the project and from PYTHONPATH: serving
# needs TensorFlow alone. It prints each signature's specs and probabilities as JSON.
LOADER = """
import importlib.util, json, sys
import numpy as np
import tensorflow as tf
assert importlib.util.find_spec("mnist_cnn") is None, "the project is importable"
images = np.load(sys.argv[1])
report = {}
for directory in sys.argv[2:]:
    loaded = tf.saved_model.load(directory)
    signature = loaded.signatures["serving_default"]
    def spec(tensor):
        return [tensor.dtype.name, tensor.shape.as_list()]
    report[directory] = {
        "signatures": sorted(loaded.signatures),
        "inputs": {k: spec(v) for k, v in signature.structured_input_signature[1].items()},
        "outputs": {k: spec(v) for k, v in signature.structured_outputs.items()},
        "probabilities": signature(images=tf.constant(images))["probabilities"].numpy().tolist(),
    }
assert "mnist_cnn" not in sys.modules
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory) -> dict[str, Path]:
    """A regularized model trained one epoch (moving batch-norm statistics, fused kernel) and
    an untrained baseline, saved as the train stage saves them."""
    folder = tmp_path_factory.mktemp("models")
    config = TrainConfig.load(ROOT / "params.yaml").replace(epochs=1, batch_size=32)
    trained, _ = training.run(
        config, regularized=True, train=synthetic_digits(256, seed=1), validation=None, verbose=0
    )
    untrained = build_model(
        regularized=False,
        dropout_rate=0.5,
        dropout_after_first_pool=False,
        batch_norm_momentum=0.9,
        fused_batch_norm=False,
    )
    files = {"regularized": folder / "regularized.keras", "baseline": folder / "baseline.keras"}
    save_model(trained, files["regularized"])
    save_model(untrained, files["baseline"])
    return files


@pytest.fixture(scope="module")
def exported(keras_files, tmp_path_factory) -> Path:
    """The export stage's output directory, written by the stage in its own process."""
    out_dir = tmp_path_factory.mktemp("stage") / "export"
    command = [sys.executable, "-m", "stages.export", "--models", *map(str, keras_files.values())]
    result = subprocess.run(
        [*command, "--out-dir", str(out_dir)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == [
        "export regularized",
        "export baseline",
    ]
    return out_dir


def files_of(directory: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def test_export_serves_the_softmax_of_the_keras_logits(keras_files, exported, tmp_path):
    images, _ = synthetic_digits(48, seed=2)
    # Dim, sparse images as well: their probabilities are far from 0 and 1, so a wrong
    # softmax (or none) cannot hide behind saturation.
    images[24:] //= 4
    np.save(tmp_path / "images.npy", images)
    directories = [str(exported / name) for name in keras_files]
    result = subprocess.run(
        [sys.executable, "-I", "-c", LOADER, str(tmp_path / "images.npy"), *directories],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert sorted(path.name for path in exported.iterdir()) == sorted(keras_files)
    for name, keras_file in keras_files.items():
        served = report[str(exported / name)]
        assert served["signatures"] == ["serving_default"]
        assert served["inputs"] == {"images": ["uint8", [None, 28, 28]]}
        assert served["outputs"] == {"probabilities": ["float32", [None, 10]]}
        logits = load_model(keras_file).predict_on_batch(images).astype(np.float64)
        assert not np.allclose(logits.sum(axis=1), 1)  # Logits served as-is would be caught.
        expected = softmax(logits, axis=1)
        assert expected.max(axis=1).min() < 0.9  # Some rows are far from one-hot.
        np.testing.assert_allclose(served["probabilities"], expected, rtol=0, atol=TOLERANCE)


def test_export_is_byte_identical_for_identical_weights(keras_files, exported, tmp_path):
    # This process has traced and exported other models before, so TensorFlow's counters
    # differ from the stage's process; a killed writer's leftover must be cleared too.
    stale = tmp_path / ".regularized.x1y2z3"
    stale.mkdir()
    (stale / "saved_model.pb").write_bytes(b"partial")
    model = load_model(keras_files["regularized"])
    serving.export_model(model, tmp_path / "regularized")
    serving.export_model(model, tmp_path / "regularized")  # Over the previous one.
    again, first = files_of(tmp_path / "regularized"), files_of(exported / "regularized")
    # Only files: DVC does not restore empty directories such as TensorFlow's assets/.
    assert (
        sorted(first)
        == sorted(again)
        == [
            "fingerprint.pb",
            "saved_model.pb",
            "variables/variables.data-00000-of-00001",
            "variables/variables.index",
        ]
    )
    assert sorted(path.name for path in (exported / "regularized").iterdir()) == [
        "fingerprint.pb",
        "saved_model.pb",
        "variables",
    ]
    differing = [name for name in first if first[name] != again[name]]
    assert differing == []
    assert [path.name for path in tmp_path.iterdir()] == ["regularized"]
    # Other weights give other bytes: the comparison above does not pass vacuously.
    other = files_of(exported / "baseline")
    assert (
        other["variables/variables.data-00000-of-00001"]
        != first["variables/variables.data-00000-of-00001"]
    )


def test_failed_export_keeps_the_previous_one_and_leaves_no_temporary(tmp_path):
    import keras

    previous = tmp_path / "model"
    previous.mkdir()
    (previous / "saved_model.pb").write_bytes(b"previous export")
    # A model that cannot take (None, 28, 28) uint8 images fails while being traced.
    wrong = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2)])
    with pytest.raises(Exception):  # noqa: B017 - TensorFlow's error type is not the point.
        serving.export_model(wrong, previous)
    assert [path.name for path in tmp_path.iterdir()] == ["model"]
    assert files_of(previous) == {"saved_model.pb": b"previous export"}


@pytest.mark.parametrize(
    "make_models, message",
    [
        (lambda files, tmp: [files["baseline"], tmp / "missing.keras"], "no such model file"),
        (lambda files, tmp: [files["baseline"], files["baseline"]], "a second model named"),
    ],
    ids=["missing", "duplicate-name"],
)
def test_export_stage_refuses_bad_inputs_before_writing(
    keras_files, tmp_path, monkeypatch, capsys, make_models, message
):
    from stages import export

    models = make_models(keras_files, tmp_path)
    out_dir = tmp_path / "out"
    monkeypatch.setattr(
        sys, "argv", ["export", "--models", *map(str, models), "--out-dir", str(out_dir)]
    )
    with pytest.raises(SystemExit) as exit_info:
        export.io.run(export.main)
    assert exit_info.value.code == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0] and str(models[1]) in error[0]
    assert not out_dir.exists()
