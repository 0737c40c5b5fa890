"""Load params.yaml, validate every key before a stage does any work, type the train knobs."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class ParamsError(ValueError):
    """A params.yaml value is missing, unknown or out of range."""


Check = Callable[[str, Any], Any]


def _fail(key: str, expected: str, got: Any) -> ParamsError:
    return ParamsError(f"The '{key}' parameter must be {expected}; got {got!r}.")


def _integer(minimum: int) -> Check:
    def check(key: str, value: Any) -> int:
        # bool is a subclass of int, so `epochs: true` must be refused explicitly.
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _fail(key, f"an integer >= {minimum}", value)
        return value

    return check


def _number(low: float, high: float, *, low_open: bool, high_open: bool) -> Check:
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    interval = f"{left}{low:g}, {'inf' if high == float('inf') else f'{high:g}'}{right}"

    def check(key: str, value: Any) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            ok = (value > low if low_open else value >= low) and (
                value < high if high_open else value <= high
            )
        if not ok:
            raise _fail(key, f"a float in {interval}", value)
        return float(value)

    return check


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(key, "true or false", value)
    return value


def _choice(*choices: Any) -> Check:
    def check(key: str, value: Any) -> Any:
        if isinstance(value, bool) or value not in choices:
            raise _fail(key, f"one of {', '.join(map(str, choices))}", value)
        return value

    return check


def _auto_or_boolean(key: str, value: Any) -> str | bool:
    if value == "auto" or isinstance(value, bool):
        return value
    raise _fail(key, "auto, true or false", value)


def _mirrors(key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(
        isinstance(url, str) and re.match(r"^(https?|file)://", url) for url in value
    ):
        raise _fail(key, "a list of http(s):// or file:// base URLs", value)
    return value


def _sha256s(key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or set(value) != set(MNIST_FILES):
        got = sorted(value) if isinstance(value, dict) else value
        raise _fail(key, f"a mapping with exactly the keys {', '.join(MNIST_FILES)}", got)
    for name, digest in value.items():
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise _fail(f"{key}.{name}", "a sha256 of 64 lowercase hex digits", digest)
    return value


SCHEMA: dict[str, dict[str, Check]] = {
    "fetch": {
        "mirrors": _mirrors,
        "timeout_seconds": _number(0, float("inf"), low_open=True, high_open=True),
        "sha256": _sha256s,
    },
    "split": {
        "protocol": _choice("article", "official"),
        "seed": _integer(0),
        "test_size": _integer(1),
        "validation_size": _integer(0),
    },
    "augment": {
        "shifts": _boolean,
        "flip_horizontal": _boolean,
    },
    "train": {
        "epochs": _integer(1),
        "batch_size": _integer(1),
        "learning_rate": _number(0, float("inf"), low_open=True, high_open=True),
        "seed": _integer(0),
        "learning_rate_schedule": _choice("constant", "cosine"),
        "dropout_rate": _number(0, 1, low_open=False, high_open=True),
        "dropout_after_first_pool": _boolean,
        "batch_norm_momentum": _number(0, 1, low_open=False, high_open=True),
        "fused_batch_norm": _boolean,
        "steps_per_execution": _integer(1),
        "deterministic": _boolean,
        "mixed_precision": _auto_or_boolean,
        "jit_compile": _auto_or_boolean,
        "strategy": _choice("auto", "default", "mirrored", "multi_worker"),
        "restore_best_weights": _boolean,
        "threads": _integer(0),
    },
    "evaluate": {
        "batch_size": _integer(1),
        "max_misclassified": _integer(0),
    },
}


def validate(params: Any, *, source: str = "params.yaml") -> dict[str, dict[str, Any]]:
    """Check every section and key of `params` and return it, or raise ParamsError."""
    if not isinstance(params, dict):
        raise ParamsError(f"{source} must hold a mapping of sections; got {type(params).__name__}.")
    for section in params:
        if section not in SCHEMA:
            raise ParamsError(
                f"{source} has an unknown section '{section}'; expected one of {', '.join(SCHEMA)}."
            )
    for section, checks in SCHEMA.items():
        values = params.get(section)
        if not isinstance(values, dict):
            raise ParamsError(f"{source} is missing the '{section}' section (a mapping of keys).")
        for key in values:
            if key not in checks:
                raise ParamsError(
                    f"{source} has an unknown key '{section}.{key}'; "
                    f"expected one of {', '.join(checks)}."
                )
        for key, check in checks.items():
            if key not in values:
                raise ParamsError(f"{source} is missing the key '{section}.{key}'.")
            check(f"{section}.{key}", values[key])
    _check_train_rules(params["train"])
    return params


def _check_train_rules(train: dict[str, Any]) -> None:
    """The rules between `train` keys, once each key is valid on its own."""
    if train["jit_compile"] is True and train["deterministic"]:
        raise ParamsError(
            "The 'train.jit_compile' parameter must be auto or false while 'train.deterministic' "
            "is true (Keras turns XLA off under op determinism); got True."
        )


def load(path: str | Path = "params.yaml") -> dict[str, dict[str, Any]]:
    """Read and validate a params file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ParamsError(f"Cannot read {path}: {error.strerror}.") from error
    try:
        params = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ParamsError(f"{path} is not valid YAML: {error}".replace("\n", " ")) from error
    return validate(params, source=str(path))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The `train` section of params.yaml, validated and typed; params.yaml holds every default."""

    epochs: int
    batch_size: int
    learning_rate: float
    learning_rate_schedule: str
    seed: int
    dropout_rate: float
    dropout_after_first_pool: bool
    batch_norm_momentum: float
    fused_batch_norm: bool
    steps_per_execution: int
    deterministic: bool
    mixed_precision: str | bool
    jit_compile: str | bool
    strategy: str
    restore_best_weights: bool
    threads: int

    @classmethod
    def from_params(cls, params: dict[str, dict[str, Any]]) -> TrainConfig:
        """The training configuration of already validated params."""
        return cls(**params["train"])

    @classmethod
    def load(cls, path: str | Path = "params.yaml") -> TrainConfig:
        """Read, validate and type the `train` section of a params file."""
        return cls.from_params(load(path))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some keys changed, validated as params.yaml's values are."""
        for key, value in changes.items():
            if key not in SCHEMA["train"]:
                raise ParamsError(f"TrainConfig has no key 'train.{key}'.")
            SCHEMA["train"][key](f"train.{key}", value)
        changed = dataclasses.replace(self, **changes)
        _check_train_rules(dataclasses.asdict(changed))
        return changed
