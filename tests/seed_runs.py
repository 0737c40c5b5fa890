"""Synthetic seed-sweep runs with known answers, built by the summary command's own parser."""

from __future__ import annotations

import hashlib
import json

from commands import summarize

CPU = "CPU (Intel(R) Xeon(R) Processor, 2 cores); TensorFlow 2.21.0; Keras 3.15.1"
GPU = "GPU (NVIDIA L4); TensorFlow 2.21.0; Keras 3.15.1"
DEFAULTS = {
    "fetch": {"sha256": {"train-images": "aa"}},
    "split": {"protocol": "article", "seed": 42, "test_size": 10000, "validation_size": 5000},
    "augment": {"shifts": True, "flip_horizontal": True},
    "train": {"epochs": 20, "seed": 42, "threads": 0, "dropout_rate": 0.5},
}


def digest(*parts) -> str:
    return hashlib.md5(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def lock_for(
    params: dict, code: str, *, augment_code: str = "a1", evaluate_code: str = "e1"
) -> dict:
    """A dvc.lock shaped like the project's, its data hashes following the params they use."""

    def section(name: str, keys: list[str]) -> dict:
        return {f"{name}.{key}": params[name][key] for key in keys}

    split_hash = digest(params["split"], params["fetch"])
    augment_hash = digest(split_hash, params["augment"])
    train_keys = ["epochs", "seed", "threads"]
    code_deps = [{"path": "stages/train.py", "hash": "md5", "md5": digest(code)}]
    validation = [{"path": "data/split/validation_images.npy", "md5": digest(split_hash, "v")}]
    return {
        "stages": {
            "fetch": {
                "params": {"params.yaml": {"fetch.sha256": params["fetch"]["sha256"]}},
                "outs": [{"path": "data/raw", "md5": "raw.dir"}],
            },
            "split": {
                "deps": [{"path": "data/raw/train-images-idx3-ubyte", "md5": "x"}],
                "params": {"params.yaml": section("split", list(params["split"]))},
                "outs": [
                    {"path": "data/split/train_images.npy", "md5": digest(split_hash, "t")},
                    {"path": "data/split/validation_images.npy", "md5": digest(split_hash, "v")},
                ],
            },
            "augment": {
                "deps": [
                    {"path": "stages/augment.py", "md5": digest(augment_code)},
                    {"path": "data/split/train_images.npy", "md5": digest(split_hash, "t")},
                ],
                "params": {"params.yaml": section("augment", ["shifts", "flip_horizontal"])},
                "outs": [{"path": "data/augment/train_images.npy", "md5": augment_hash}],
            },
            "train-baseline": {
                "deps": code_deps
                + [{"path": "data/split/train_images.npy", "md5": digest(split_hash, "t")}]
                + validation,
                "params": {"params.yaml": section("train", train_keys)},
            },
            "train-regularized": {
                "deps": code_deps
                + [{"path": "data/augment/train_images.npy", "md5": augment_hash}]
                + validation,
                "params": {"params.yaml": section("train", [*train_keys, "dropout_rate"])},
                "outs": [{"path": "models/regularized.keras", "md5": digest(code, "r")}],
            },
            "evaluate": {
                "deps": [
                    {"path": "stages/evaluate.py", "md5": digest(evaluate_code)},
                    {"path": "models/regularized.keras", "md5": digest(code, "r")},
                ],
                "outs": [{"path": "metrics/test.json", "md5": "m"}],
            },
        }
    }


def make_run(
    name, seed, accuracy, validation, *, code="v1", trained_on=CPU, evaluate_code="e1", **changes
) -> dict:
    """One experiment's record built by the command's own parser from a lock and metrics."""
    params = json.loads(json.dumps(DEFAULTS))
    params["train"].update(seed=seed, threads=1)
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        params[section][key] = value
    metrics = {"metrics/test.json": {}}
    for model in ("baseline", "regularized"):
        errors = round((1 - accuracy[model]) * 10000)
        metrics["metrics/test.json"][model] = {
            "test_accuracy": accuracy[model],
            "test_loss": 0.02,
            "test_errors": errors,
        }
        metrics[f"metrics/train/{model}/metrics.json"] = {
            model: {"val_accuracy": validation[model], "saved_epoch": 7, "trained_on": trained_on}
        }
    return {
        "experiment": name,
        "experiment_rev": digest(name, code, trained_on, seed, evaluate_code) + "00000000",
        "baseline_rev": "b" * 40,
        "seed": seed,
        "models": summarize.model_entries(
            lock_for(params, code, evaluate_code=evaluate_code), metrics
        ),
    }


# A sweep like the real one: the baseline's numbers depend only on protocol and seed, since it
# reads no augment.* param; the regularized model's depend on the augmentation too.
BASELINE = {"article": [0.9911, 0.9905, 0.9914], "official": [0.9902, 0.9897, 0.9909]}
REGULARIZED = {
    ("article", True, True): [0.9939, 0.9944, 0.9936],
    ("article", False, True): [0.9947, 0.9942, 0.9950],
    ("article", False, False): [0.9921, 0.9925, 0.9918],
    ("official", True, True): [0.9941, 0.9934, 0.9938],
}


# The no-augmentation runs have the best validation accuracy and the worst test accuracy.
VALIDATION = {"default": 0.995, "noflip": 0.996, "noaug": 0.997}


VALIDATION_PAIR = {"baseline": 0.99, "regularized": 0.995}


def sweep() -> list[dict]:
    runs = []
    for (protocol, flip, shifts), values in REGULARIZED.items():
        label = {(True, True): "default", (False, True): "noflip", (False, False): "noaug"}
        config = label[flip, shifts]
        for index, seed in enumerate((1, 2, 3)):
            runs.append(
                make_run(
                    f"{protocol[:3]}-{config}-s{seed}",
                    seed,
                    {"baseline": BASELINE[protocol][index], "regularized": values[index]},
                    {"baseline": 0.990, "regularized": VALIDATION[config]},
                    split__protocol=protocol,
                    augment__flip_horizontal=flip,
                    augment__shifts=shifts,
                )
            )
    return runs


def by_model(groups) -> dict[str, list]:
    result: dict[str, list] = {"baseline": [], "regularized": []}
    for group in groups:
        result[group.model].append(group)
    return result
