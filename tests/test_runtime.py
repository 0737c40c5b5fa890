"""TensorFlow's process-wide settings: oneDNN chosen before TensorFlow loads, and train.threads."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from mnist_cnn.runtime import ONEDNN_VARIABLE
from tests.conftest import ROOT

# An import hook that records the oneDNN variable when TensorFlow or Keras starts to load and,
# when BLOCK is set, stops the load there: the record is all a check needs, and it saves
# loading TensorFlow.
WATCH = """
import importlib
import importlib.abc
import json
import os
import sys

BLOCK = {block}
seen = {{}}


class Blocked(ImportError):
    pass


class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name in ("tensorflow", "keras"):
            if not seen:
                seen["module"] = name
                seen["variable"] = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset")
            if BLOCK:
                raise Blocked(name)
        return None


sys.meta_path.insert(0, Watch())
"""
REPORT = """
print(json.dumps({**seen, "after": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset")}))
"""
# TensorFlow's own log lines: glog-style prefixes, the notice before them, its CPU notice.
TENSORFLOW_LOG = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl|To enable the)")


def python(code: str, *, block: bool, **environment: str) -> tuple[dict, list[str]]:
    """Run WATCH, `code` and REPORT in a fresh interpreter, without the oneDNN variable unless
    given; return the report and the stderr lines that are not TensorFlow's own log."""
    env = {key: value for key, value in os.environ.items() if key != ONEDNN_VARIABLE}
    env.update(environment)
    guarded = f"try:\n{textwrap.indent(code, '    ')}\nexcept Blocked:\n    pass\n"
    result = subprocess.run(
        [sys.executable, "-c", WATCH.format(block=block) + guarded + REPORT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    # TensorFlow's log names the variable too; the project's lines are the others.
    printed = [line for line in result.stderr.splitlines() if not TENSORFLOW_LOG.match(line)]
    return json.loads(result.stdout.strip().splitlines()[-1]), printed


def test_importing_mnist_cnn_first_turns_onednn_on_before_tensorflow_loads():
    seen, printed = python("import mnist_cnn\nimport tensorflow", block=True)
    assert seen == {"module": "tensorflow", "variable": "1", "after": "1"}
    assert printed == []


def test_tensorflow_imported_first_gets_one_warning_naming_the_variable():
    # A second call must not repeat the warning.
    code = "import tensorflow\nimport mnist_cnn\nmnist_cnn.runtime.prepare_tensorflow()"
    seen, printed = python(code, block=False)
    assert seen == {"module": "tensorflow", "variable": "unset", "after": "unset"}
    assert len(printed) == 1, printed
    assert printed[0].startswith("warning: ") and ONEDNN_VARIABLE in printed[0]


@pytest.mark.parametrize("tensorflow_first", [False, True], ids=["mnist_cnn first", "tf first"])
def test_an_explicit_choice_of_the_user_is_kept_without_a_warning(tensorflow_first):
    imports = ["import mnist_cnn", "import tensorflow"]
    if tensorflow_first:
        imports.reverse()
    # Only the TensorFlow-first order needs TensorFlow loaded for real: the warning checks
    # sys.modules.
    code = "\n".join(imports)
    seen, printed = python(code, block=not tensorflow_first, **{ONEDNN_VARIABLE: "0"})
    assert seen == {"module": "tensorflow", "variable": "0", "after": "0"}
    assert printed == []


ENTRY_POINTS = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts)
    for folder in ("stages", "commands")
    for path in (ROOT / folder).glob("*.py")
    if path.name != "__init__.py"
)
# Entry points that load TensorFlow when imported: the check must see them start to.
LOADS_TENSORFLOW = ("stages.train", "stages.evaluate")
TENSORFLOW_MODULES = ("tensorflow", "keras")

# Imports each entry point as a fresh program would, the project's modules forgotten and the
# variable unset in between; TensorFlow is blocked, so it never loads.
EACH_ENTRY_POINT = """
records = {}
for name in sys.argv[1:]:
    for module in list(sys.modules):
        if module.split(".")[0] in ("mnist_cnn", "stages", "commands"):
            del sys.modules[module]
    os.environ.pop("TF_ENABLE_ONEDNN_OPTS", None)
    seen.clear()
    try:
        importlib.import_module(name)
    except Blocked:
        pass
    records[name] = dict(seen)
seen = {"records": records}
"""


@pytest.fixture(scope="module")
def entry_point_records() -> dict[str, dict]:
    result = subprocess.run(
        [sys.executable, "-c", WATCH.format(block=True) + EACH_ENTRY_POINT + REPORT] + ENTRY_POINTS,
        cwd=ROOT,
        env={key: value for key, value in os.environ.items() if key != ONEDNN_VARIABLE},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if ONEDNN_VARIABLE in line] == []
    return json.loads(result.stdout.strip().splitlines()[-1])["records"]


def test_the_entry_point_check_sees_tensorflow_load(entry_point_records):
    assert set(LOADS_TENSORFLOW) <= set(ENTRY_POINTS)
    for name in LOADS_TENSORFLOW:
        assert entry_point_records[name].get("module") in TENSORFLOW_MODULES, name


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_entry_points_turn_onednn_on_before_tensorflow_loads(entry_point_records, name):
    seen = entry_point_records[name]
    if seen:
        assert seen["variable"] == "1", f"{name} loads {seen['module']} before mnist_cnn"


def imported_modules(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        return [node.module]
    return []


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_entry_points_import_mnist_cnn_before_tensorflow_in_their_source(name):
    # Imports inside functions run only when called, so the check above misses them: any import
    # of TensorFlow or Keras, at any depth, must follow a module-level import of mnist_cnn.
    path = ROOT.joinpath(*name.split(".")).with_suffix(".py")
    tree = ast.parse(path.read_text(), filename=str(path))
    first_mnist_cnn = min(
        (
            node.lineno
            for node in tree.body
            if any(module.split(".")[0] == "mnist_cnn" for module in imported_modules(node))
        ),
        default=None,
    )
    for node in ast.walk(tree):
        for module in imported_modules(node):
            if module.split(".")[0] in TENSORFLOW_MODULES or module == "dvclive.keras":
                assert first_mnist_cnn is not None and first_mnist_cnn < node.lineno, (
                    f"{path.relative_to(ROOT)}:{node.lineno} imports {module} before mnist_cnn"
                )


THREADS_SCRIPT = """
import json

from mnist_cnn.distribute import weights_digest
from mnist_cnn.params import TrainConfig
from mnist_cnn.training import run
from tests.conftest import ROOT, synthetic_digits

import tensorflow as tf

config = TrainConfig.load(ROOT / "params.yaml").replace(epochs=3, batch_size=32, threads=1)
train, validation = synthetic_digits(400, seed=0), synthetic_digits(200, seed=1)
results = []
for _ in range(2):
    model, history = run(config, regularized=True, train=train, validation=validation, verbose=0)
    results.append({"history": history.history, "weights": weights_digest(model)})
threads = [
    tf.config.threading.get_intra_op_parallelism_threads(),
    tf.config.threading.get_inter_op_parallelism_threads(),
]
print(json.dumps({"runs": results, "threads": threads}))
"""


def test_one_thread_trains_and_repeats_itself():
    # train.threads: 1, else the shipped params of the learning test in test_training.py.
    # TensorFlow takes its thread counts before its first op, hence a fresh process.
    result = subprocess.run(
        [sys.executable, "-c", THREADS_SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout.strip().splitlines()[-1])
    assert results["threads"] == [1, 1]
    first, second = results["runs"]
    assert first == second
    assert max(first["history"]["val_accuracy"]) >= 0.95
