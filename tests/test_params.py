"""params.yaml validation: one clear error per bad value, before any stage does work."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from mnist_cnn.params import ParamsError, TrainConfig, load, validate
from tests.conftest import ROOT

DEFAULTS = yaml.safe_load((ROOT / "params.yaml").read_text())


def with_value(section: str, key: str, value):
    params = copy.deepcopy(DEFAULTS)
    params[section][key] = value
    return params


BAD = [
    (("train", "epochs", 0), "The 'train.epochs' parameter must be an integer >= 1; got 0."),
    (("train", "epochs", -1), "'train.epochs' parameter must be an integer >= 1; got -1"),
    (("train", "epochs", 2.5), "'train.epochs' parameter must be an integer >= 1; got 2.5"),
    (("train", "epochs", "ten"), "'train.epochs' parameter must be an integer >= 1; got 'ten'"),
    (("train", "epochs", True), "'train.epochs' parameter must be an integer >= 1; got True"),
    (("train", "batch_size", 0), "'train.batch_size' parameter must be an integer >= 1; got 0"),
    (("train", "dropout_rate", 1.0), "'train.dropout_rate' parameter must be a float in [0, 1)"),
    (("train", "dropout_rate", -0.1), "'train.dropout_rate' parameter must be a float in [0, 1)"),
    (("train", "dropout_rate", 1.5), "must be a float in [0, 1); got 1.5."),
    (("train", "learning_rate", 0), "'train.learning_rate' parameter must be a float in (0, inf)"),
    (("train", "learning_rate", -0.001), "'train.learning_rate' parameter must be a float"),
    (
        ("train", "learning_rate_schedule", "step"),
        "'train.learning_rate_schedule' parameter must be one of constant, cosine; got 'step'",
    ),
    (("train", "batch_norm_momentum", 1), "'train.batch_norm_momentum' parameter must be"),
    (("train", "fused_batch_norm", 1), "'train.fused_batch_norm' parameter must be true or false"),
    (("train", "deterministic", "yes"), "'train.deterministic' parameter must be true or false"),
    (("train", "jit_compile", "sometimes"), "'train.jit_compile' parameter must be auto, true"),
    (
        ("train", "strategy", "tpu"),
        "'train.strategy' parameter must be one of auto, default, mirrored, multi_worker; "
        "got 'tpu'",
    ),
    (
        ("train", "restore_best_weights", "always"),
        "'train.restore_best_weights' parameter must be true or false; got 'always'",
    ),
    (("split", "test_size", -5), "'split.test_size' parameter must be an integer >= 1; got -5"),
    (("split", "validation_size", -1), "'split.validation_size' parameter must be an integer >= 0"),
    (("split", "seed", "abc"), "'split.seed' parameter must be an integer >= 0"),
    (
        ("split", "protocol", "kaggle"),
        "The 'split.protocol' parameter must be one of article, official; got 'kaggle'.",
    ),
    (("split", "protocol", True), "'split.protocol' parameter must be one of article, official"),
    (("split", "protocol", None), "'split.protocol' parameter must be one of article, official"),
    (("train", "threads", -1), "The 'train.threads' parameter must be an integer >= 0; got -1."),
    (("train", "threads", 1.5), "'train.threads' parameter must be an integer >= 0; got 1.5"),
    (("train", "threads", True), "'train.threads' parameter must be an integer >= 0; got True"),
    (("train", "threads", "all"), "'train.threads' parameter must be an integer >= 0; got 'all'"),
    (("augment", "shifts", [[2, 0]]), "'augment.shifts' parameter must be true or false"),
    (
        ("augment", "flip_horizontal", 1),
        "'augment.flip_horizontal' parameter must be true or false",
    ),
    (
        ("fetch", "timeout_seconds", 0),
        "'fetch.timeout_seconds' parameter must be a float in (0, inf)",
    ),
    (("fetch", "mirrors", "https://x/"), "'fetch.mirrors' parameter must be a list"),
    (("fetch", "mirrors", ["ftp://x/"]), "'fetch.mirrors' parameter must be a list"),
    (("evaluate", "max_misclassified", -1), "'evaluate.max_misclassified' parameter must be"),
]


@pytest.mark.parametrize(("change", "message"), BAD, ids=[f"{c[1]}={c[2]!r}" for c, _ in BAD])
def test_bad_value(change, message):
    with pytest.raises(ParamsError) as error:
        validate(with_value(*change))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_bad_sha256():
    params = copy.deepcopy(DEFAULTS)
    params["fetch"]["sha256"]["t10k-labels-idx1-ubyte"] = "abc"
    with pytest.raises(ParamsError, match=r"'fetch.sha256.t10k-labels-idx1-ubyte' .* 64"):
        validate(params)


def test_unknown_key_is_an_error():
    params = copy.deepcopy(DEFAULTS)
    params["train"]["epoch"] = 30
    with pytest.raises(ParamsError, match="unknown key 'train.epoch'; expected one of epochs,"):
        validate(params)


def test_unknown_section_is_an_error():
    params = copy.deepcopy(DEFAULTS)
    params["trian"] = {}
    with pytest.raises(ParamsError, match="unknown section 'trian'"):
        validate(params)


def test_missing_section_and_key():
    params = copy.deepcopy(DEFAULTS)
    del params["augment"]
    with pytest.raises(ParamsError, match="missing the 'augment' section"):
        validate(params)
    params = copy.deepcopy(DEFAULTS)
    del params["train"]["seed"]
    with pytest.raises(ParamsError, match="missing the key 'train.seed'"):
        validate(params)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("split", "protocol", "article"),
        ("split", "protocol", "official"),
        ("train", "threads", 0),
        ("train", "threads", 1),
        ("train", "threads", 64),
    ],
)
def test_good_value(section, key, value):
    assert validate(with_value(section, key, value))[section][key] == value


def with_train(**values):
    params = copy.deepcopy(DEFAULTS)
    params["train"].update(values)
    return params


def test_jit_compile_true_is_refused_under_determinism():
    with pytest.raises(ParamsError) as error:
        validate(with_train(jit_compile=True, deterministic=True))
    assert str(error.value) == (
        "The 'train.jit_compile' parameter must be auto or false while 'train.deterministic' "
        "is true (Keras turns XLA off under op determinism); got True."
    )
    # Every other combination is valid.
    for jit_compile in ("auto", True, False):
        for deterministic in (True, False):
            if not (jit_compile is True and deterministic):
                params = with_train(jit_compile=jit_compile, deterministic=deterministic)
                assert validate(params)["train"]["jit_compile"] == jit_compile


def test_params_from_before_protocols_and_threads_are_told_what_is_missing():
    for section, key in (("split", "protocol"), ("train", "threads")):
        params = copy.deepcopy(DEFAULTS)
        del params[section][key]
        with pytest.raises(ParamsError) as error:
            validate(params)
        assert str(error.value) == f"params.yaml is missing the key '{section}.{key}'."


def test_train_config_reads_and_checks_threads(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(with_train(threads=3)))
    config = TrainConfig.load(path)
    assert config.threads == 3 and config.replace(threads=1).threads == 1
    with pytest.raises(ParamsError, match=r"^The 'train.threads' parameter .* >= 0; got -2.$"):
        config.replace(threads=-2)


def test_defaults_are_valid_and_files_are_named(tmp_path):
    assert validate(copy.deepcopy(DEFAULTS)) == DEFAULTS
    broken = tmp_path / "params.yaml"
    broken.write_text("train: [unclosed")
    with pytest.raises(ParamsError, match=f"{broken} is not valid YAML"):
        load(broken)
    with pytest.raises(ParamsError, match="Cannot read"):
        load(tmp_path / "absent.yaml")


def test_stage_refuses_bad_params_and_leaves_outputs_alone(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(with_value("augment", "flip_horizontal", "maybe")))
    out = tmp_path / "augment"
    out.mkdir()
    existing = out / "train_images.npy"
    existing.write_bytes(b"previous output")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.augment",
            "--params",
            str(params),
            "--split-dir",
            str(tmp_path / "absent"),
            "--out-dir",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr == (
        "error: The 'augment.flip_horizontal' parameter must be true or false; got 'maybe'.\n"
    )
    assert existing.read_bytes() == b"previous output"
    assert sorted(p.name for p in out.iterdir()) == ["train_images.npy"]
