"""End to end: `dvc repro` of the whole pipeline on tiny synthetic MNIST in a copied project."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import (
    commit_all,
    dvc,
    make_project,
    tiny_params,
    update_params,
    write_mirror,
)

MODELS = ("baseline", "regularized")
EPOCHS = 3
# Chance is 0.1 on ten classes. Three epochs on the tiny synthetic digits reach about 0.84
# (baseline) and 1.0 (regularized) on validation, 0.93 and 1.0 on test: a model that does not
# learn, or scores that belong to another set or model, stay below the floor.
ACCURACY_FLOOR = 0.5
TEST_KEYS = {"test_accuracy", "test_loss", "test_errors"}
TRAIN_KEYS = {
    "epochs_trained",
    "saved_epoch",
    "val_accuracy",
    "val_loss",
    "last_epoch_val_accuracy",
    "trained_on",
}
METRIC_NAMES = {f"{model}.{key}" for model in MODELS for key in TEST_KEYS | TRAIN_KEYS}
CURVES = (
    "train/accuracy.tsv",
    "train/loss.tsv",
    "train/learning_rate.tsv",
    "eval/accuracy.tsv",
    "eval/loss.tsv",
)
OUTPUTS = [
    "data/raw/train-images-idx3-ubyte",
    *(
        f"data/split/{part}_{kind}.npy"
        for part in ("train", "validation", "test")
        for kind in ("images", "labels")
    ),
    "data/augment/train_images.npy",
    "data/augment/train_labels.npy",
    *(f"models/{model}.keras" for model in MODELS),
    *(f"metrics/train/{model}/metrics.json" for model in MODELS),
    *(f"metrics/train/{model}/plots/metrics/{curve}" for model in MODELS for curve in CURVES),
    "metrics/test.json",
    *(
        f"metrics/plots/{model}_{kind}"
        for model in MODELS
        for kind in ("predictions.csv", "misclassified.png")
    ),
]


@pytest.fixture(scope="module")
def ran(tmp_path_factory, tiny_files) -> Path:
    """The project after one `dvc repro` of every stage, its results committed."""
    folder = tmp_path_factory.mktemp("pipeline")
    sha256 = write_mirror(folder / "mirror", tiny_files)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MNIST_MIRROR", str(folder / "mirror"))
        project = make_project(folder / "project", tiny_params(sha256=sha256))
        update_params(project, train={"epochs": EPOCHS})
        output = dvc(project, "repro").stdout
    for stage in yaml.safe_load((project / "dvc.yaml").read_text())["stages"]:
        assert f"Running stage '{stage}'" in output, stage
    commit_all(project, "pipeline run")
    return project


def read_tsv(path: Path) -> list[dict[str, float]]:
    with path.open() as handle:
        return [
            {k: float(v) for k, v in row.items()} for row in csv.DictReader(handle, delimiter="\t")
        ]


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_repro_writes_every_output_with_the_parts_sizes(ran):
    for output in OUTPUTS:
        assert (ran / output).is_file(), output
    lock = yaml.safe_load((ran / "dvc.lock").read_text())
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            assert (ran / out["path"]).exists(), out["path"]
    split = {
        name: np.load(ran / f"data/split/{name}.npy")
        for name in ("train_images", "train_labels", "validation_images", "test_images")
    }
    # 300 + 100 synthetic images: split.test_size 100, split.validation_size 50, the rest train.
    assert len(split["test_images"]) == 100 and len(split["validation_images"]) == 50
    assert len(split["train_images"]) == len(split["train_labels"]) == 250
    assert all(array.dtype == np.uint8 for array in split.values())
    augmented = np.load(ran / "data/augment/train_images.npy")
    augmented_labels = np.load(ran / "data/augment/train_labels.npy")
    assert augmented.dtype == np.uint8 and augmented.shape == (6 * 250, 28, 28)
    np.testing.assert_array_equal(
        np.bincount(augmented_labels, minlength=10),
        6 * np.bincount(split["train_labels"], minlength=10),
    )


def test_test_metrics_are_the_saved_models_scores_on_the_test_set(ran):
    from mnist_cnn.model import load_model

    metrics = json.loads((ran / "metrics/test.json").read_text())
    assert set(metrics) == set(MODELS)
    images = np.load(ran / "data/split/test_images.npy")
    labels = np.load(ran / "data/split/test_labels.npy")
    for model_name in MODELS:
        scores = metrics[model_name]
        assert set(scores) == TEST_KEYS, model_name
        assert ACCURACY_FLOOR <= scores["test_accuracy"] <= 1.0, (model_name, scores)
        assert math.isfinite(scores["test_loss"]) and scores["test_loss"] > 0, scores
        # The scores are those of the saved model on the test part, recomputed here.
        logits = load_model(ran / f"models/{model_name}.keras").predict(images, verbose=0)
        predicted = logits.argmax(axis=1)
        assert scores["test_errors"] == int((predicted != labels).sum()), model_name
        assert scores["test_accuracy"] == pytest.approx(float((predicted == labels).mean()))
        shifted = logits.astype("float64") - logits.max(axis=1, keepdims=True)
        log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss = -float(log_probabilities[np.arange(len(labels)), labels].mean())
        assert scores["test_loss"] == pytest.approx(loss, rel=1e-5), model_name
        with (ran / f"metrics/plots/{model_name}_predictions.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        assert [int(row["actual"]) for row in rows] == labels.tolist()
        assert [int(row["predicted"]) for row in rows] == predicted.tolist()


def test_train_metrics_describe_the_saved_epoch_of_the_curves(ran):
    for model_name in MODELS:
        live = ran / f"metrics/train/{model_name}"
        metrics = json.loads((live / "metrics.json").read_text())
        assert list(metrics) == [model_name]
        summary = metrics[model_name]
        assert set(summary) == TRAIN_KEYS, model_name
        curves = {name: read_tsv(live / "plots/metrics" / name) for name in CURVES}
        for name, rows in curves.items():
            assert [row["step"] for row in rows] == list(range(EPOCHS)), (model_name, name)
        accuracy = [row["accuracy"] for row in curves["eval/accuracy.tsv"]]
        loss = [row["loss"] for row in curves["eval/loss.tsv"]]
        best = int(np.argmax(accuracy))
        assert summary["epochs_trained"] == EPOCHS
        # restore_best_weights: the saved weights are the best validation epoch's.
        assert summary["saved_epoch"] == best + 1
        assert summary["val_accuracy"] == pytest.approx(accuracy[best], rel=1e-9)
        assert summary["val_loss"] == pytest.approx(loss[best], rel=1e-9)
        assert summary["last_epoch_val_accuracy"] == pytest.approx(accuracy[-1], rel=1e-9)
        assert ACCURACY_FLOOR <= summary["val_accuracy"] <= 1.0, (model_name, summary)
        assert summary["trained_on"].startswith(("CPU", "GPU")), summary["trained_on"]
        # The cosine schedule spans every epoch: after epoch k it is 0.001 * (1 + cos(pi k/E)) / 2.
        rates = [row["learning_rate"] for row in curves["train/learning_rate.tsv"]]
        expected = [0.0005 * (1 + math.cos(math.pi * k / EPOCHS)) for k in range(1, EPOCHS + 1)]
        assert rates == pytest.approx(expected, rel=1e-5, abs=1e-9), model_name


def test_metrics_show_names_every_metric_by_model_and_set(ran):
    shown = json.loads(dvc(ran, "metrics", "show", "--json").stdout)
    files = shown[""]["data"]
    assert set(files) == {
        "metrics/test.json",
        "metrics/train/baseline/metrics.json",
        "metrics/train/regularized/metrics.json",
    }
    names = [name for content in files.values() for name in flatten(content["data"])]
    # One name, one file: no metric of one file shadows another's in `dvc exp show`.
    assert sorted(names) == sorted(METRIC_NAMES)
    header = dvc(ran, "metrics", "show").stdout.splitlines()[0].split()
    assert set(header) == {"Path"} | METRIC_NAMES


def test_second_repro_runs_nothing(ran):
    assert "Running stage" not in dvc(ran, "repro").stdout
    assert dvc(ran, "status").stdout.strip().endswith("up to date.")


def test_changed_param_reruns_training_and_the_diff_names_each_metric_once(ran, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(ran, project, symlinks=True)
    run = dvc(project, "exp", "run", "-S", "train.epochs=2")
    assert "Running stage 'train-baseline'" in run.stdout
    assert "Running stage 'augment'" not in run.stdout

    lines = dvc(project, "metrics", "diff", "--no-path", "--all").stdout.splitlines()
    assert lines[0].split()[:3] == ["Metric", "HEAD", "workspace"]
    names = [line.split()[0] for line in lines[1:] if line.strip()]
    assert len(names) == len(set(names)), names
    assert set(names) == METRIC_NAMES
    changed = dvc(project, "metrics", "diff", "--no-path").stdout.splitlines()
    changed_names = [line.split()[0] for line in changed[1:] if line.strip()]
    assert len(changed_names) == len(set(changed_names)), changed_names
    diff = json.loads(dvc(project, "metrics", "diff", "--json").stdout)
    for model_name in MODELS:
        epochs = diff[f"metrics/train/{model_name}/metrics.json"][f"{model_name}.epochs_trained"]
        assert (epochs["old"], epochs["new"]) == (EPOCHS, 2)

    rows = json.loads(dvc(project, "exp", "show", "--json").stdout)
    experiments = [exp for row in rows for exp in (row.get("experiments") or [])]
    assert len(experiments) == 1
    data = experiments[0]["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["train"]["epochs"] == 2
    metrics = data["metrics"]
    for model_name in MODELS:
        trained = metrics[f"metrics/train/{model_name}/metrics.json"]["data"][model_name]
        assert trained["epochs_trained"] == 2
        tested = metrics["metrics/test.json"]["data"][model_name]
        assert ACCURACY_FLOOR <= tested["test_accuracy"] <= 1.0, tested
    header = dvc(project, "exp", "show", "--no-pager", "--csv").stdout.splitlines()[0].split(",")
    assert "train.epochs" in header and METRIC_NAMES <= set(header)
    assert not {"accuracy", "loss", "step", "val_accuracy"} & set(header), header
