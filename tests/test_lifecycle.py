"""Model lifecycle: registered versions, the plots page, metric names and experiment tables."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import dvc, git, make_project, tiny_params, write_mirror

MODELS = ("baseline", "regularized")
TERMINAL_WIDTH = 80
# Both accuracies in 80 columns; experiment names of up to 9 characters fit beside them.
ACCURACY_TABLE = (
    "exp",
    "show",
    "--no-pager",
    "--drop",
    ".*",
    "--keep",
    "Experiment|.*test_accuracy",
)
# The params each experiment changed (metrics, dates and dependency hashes dropped).
CHANGES_TABLE = (
    "exp",
    "show",
    "--no-pager",
    "--only-changed",
    "--drop",
    r"Created|(baseline|regularized)\.|.*/",
)
CURVES = {
    "Validation accuracy per epoch": ("eval/accuracy.tsv", "accuracy"),
    "Validation loss per epoch": ("eval/loss.tsv", "loss"),
    "Training loss per epoch": ("train/loss.tsv", "loss"),
}


def confusion_title(model: str) -> str:
    return f"Test set, {model} (errors coloured)"


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, tiny_files) -> Path:
    """One `dvc repro` on tiny data, committed; the tests that change it work on copies."""
    root = tmp_path_factory.mktemp("lifecycle")
    sha256 = write_mirror(root / "mirror", tiny_files)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MNIST_MIRROR", str(root / "mirror"))
        project = make_project(root / "project", tiny_params(sha256=sha256))
        dvc(project, "repro")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "pipeline run")
    return project


def copy_project(source: Path, destination: Path) -> Path:
    """A copy of a repository with its git history and DVC cache."""
    shutil.copytree(source, destination, symlinks=True)
    return destination


def gto(cwd: Path, *args: str) -> str:
    """Run the gto of this interpreter's environment in `cwd`; return its output."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "gto"), *args], cwd=cwd, capture_output=True, text=True
    )
    assert result.returncode == 0, f"gto {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
    return result.stdout


def test_registered_versions_come_back_from_the_remote(reproduced, tmp_path):
    project = copy_project(reproduced, tmp_path / "project")
    dvc(project, "remote", "add", "--default", "storage", str(tmp_path / "storage"))
    # A version tag must point at a commit whose .dvc/config names the remote.
    git(project, "commit", "-q", "-m", "storage remote", ".dvc/config")
    dvc(project, "push")
    gto(project, "register", "regularized", "--version", "v1.0.0")
    gto(project, "assign", "regularized", "--version", "v1.0.0", "--stage", "prod")
    first = (project / "models/regularized.keras").read_bytes()

    # A second version with other bytes, so that each lookup has a wrong answer to avoid.
    shutil.copy(project / "models/baseline.keras", project / "models/regularized.keras")
    dvc(project, "commit", "--force", "train-regularized")
    git(project, "commit", "-q", "-a", "-m", "another regularized model")
    dvc(project, "push")
    gto(project, "register", "regularized", "--version", "v1.1.0")
    second = (project / "models/regularized.keras").read_bytes()
    assert first != second

    tag_type = subprocess.run(
        ["git", "cat-file", "-t", "regularized@v1.0.0"],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    )
    assert tag_type.stdout.strip() == "tag", "GTO's version tag is not an annotated tag"

    # Only the remote holds the models now.
    shutil.rmtree(project / ".dvc/cache")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lookups = {"v1.0.0": ("--rev", "v1.0.0"), "prod": ("--stage", "prod"), "latest": ()}
    expected = {"v1.0.0": first, "prod": first, "latest": second}
    for name, selector in lookups.items():
        out = elsewhere / f"{name}.keras"
        dvc(elsewhere, "artifacts", "get", str(project), "regularized", *selector, "-o", str(out))
        assert out.read_bytes() == expected[name], f"dvc artifacts get {selector}: wrong bytes"


def read_table(path: Path, delimiter: str) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file, delimiter=delimiter))


def test_plots_page_draws_each_chart_once_with_both_models(reproduced):
    shown = json.loads(dvc(reproduced, "plots", "show", "--json").stdout)["data"]
    charts = {}
    for plot_id, entries in shown.items():
        for entry in entries:
            title = plot_id if entry["type"] == "image" else entry["content"]["title"]["text"]
            charts.setdefault(title, []).append(entry)

    vega = {title for title, entries in charts.items() if entries[0]["type"] == "vega"}
    # The curves are stage-level plots too (kept in git without losing the run-cache), so DVC
    # also draws each curve file alone; the comparison charts and the confusion matrices are
    # what must be there, each once.
    assert vega >= {*CURVES, *map(confusion_title, MODELS)}, f"charts: {sorted(charts)}"
    for model in MODELS:
        assert f"metrics/plots/{model}_misclassified.png" in charts
        # The predictions CSV is drawn only as its confusion matrix, not as a line chart.
        assert f"metrics/plots/{model}_predictions.csv" not in charts, sorted(charts)
    for title in (*CURVES, *map(confusion_title, MODELS)):
        assert len(charts[title]) == 1, title

    for title, (name, field) in CURVES.items():
        rows = charts[title][0]["content"]["data"]["values"]
        for model in MODELS:
            path = f"{model}/plots/metrics/{name}"
            drawn = [(row["step"], row[field]) for row in rows if row["filename"].endswith(path)]
            written = read_table(reproduced / "metrics/train" / path, "\t")
            assert drawn == [(row["step"], row[field]) for row in written], (title, model)

    for model in MODELS:
        content = charts[confusion_title(model)][0]["content"]
        drawn = Counter((row["actual"], row["predicted"]) for row in content["data"]["values"])
        written = read_table(reproduced / f"metrics/plots/{model}_predictions.csv", ",")
        assert drawn == Counter((row["actual"], row["predicted"]) for row in written)
        # The project's confusion_errors template colours the off-diagonal cells by count.
        colours = {
            layer["encoding"]["color"].get("field")
            for layer in content["spec"]["layer"]
            if "color" in layer.get("encoding", {})
        }
        assert "errors" in colours, f"{model}: not the confusion_errors template"


def flatten(tree: dict, prefix: str = "") -> list[str]:
    names = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        names += flatten(value, f"{name}.") if isinstance(value, dict) else [name]
    return names


def metric_names(project: Path) -> dict[str, list[str]]:
    """The metric names of each metrics file of the workspace, as `dvc metrics show` reads them."""
    files = json.loads(dvc(project, "metrics", "show", "--json").stdout)[""]["data"]
    assert all("error" not in content for content in files.values()), files
    return {path: flatten(content["data"]) for path, content in files.items()}


def test_metric_names_are_unambiguous(reproduced):
    names = metric_names(reproduced)
    assert sorted(names) == sorted(
        ["metrics/test.json", *(f"metrics/train/{model}/metrics.json" for model in MODELS)]
    )
    every_name = [name for file_names in names.values() for name in file_names]
    assert len(every_name) == len(set(every_name)), Counter(every_name).most_common(3)
    for path, file_names in names.items():
        for name in file_names:
            model, _, metric = name.partition(".")
            assert model in MODELS, f"{path}: {name} does not start with a model name"
            assert metric.startswith("test_") == (path == "metrics/test.json"), (path, name)


def table_lines(project: Path, args: tuple[str, ...]) -> list[str]:
    """The table as an 80-column terminal shows it, without its horizontal rules."""
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": str(TERMINAL_WIDTH)},
    )
    lines = result.stdout.splitlines()
    assert lines and all(len(line) <= TERMINAL_WIDTH for line in lines), result.stdout
    assert "…" not in result.stdout, f"a column was collapsed:\n{result.stdout}"
    return [line for line in lines if line.strip() and set(line.strip()) != {"─"}]


def row_values(lines: list[str], experiment: str) -> dict[str, str]:
    """The values of one experiment's row, by column name."""
    header = lines[0].split()
    (row,) = [line for line in lines if f"[{experiment}]" in line]
    values = row.split()[-(len(header) - 1) :]
    return dict(zip(header[1:], values, strict=True))


def test_experiment_tables_fit_in_80_columns(reproduced, tmp_path):
    project = copy_project(reproduced, tmp_path / "project")
    dvc(project, "exp", "run", "--temp", "-n", "pics-10", "-S", "evaluate.max_misclassified=10")
    dvc(project, "exp", "run", "-n", "epochs-2", "-S", "train.epochs=2")

    diff = dvc(project, "metrics", "diff", "--no-path", "--all", "HEAD", "epochs-2").stdout
    rows = [line.split()[0] for line in diff.splitlines()[1:] if line.strip()]
    every_name = [name for file_names in metric_names(project).values() for name in file_names]
    assert sorted(rows) == sorted(every_name), diff

    recorded = {
        row["Experiment"]: row
        for row in csv.DictReader(dvc(project, "exp", "show", "--csv").stdout.splitlines())
    }
    accuracy = table_lines(project, ACCURACY_TABLE)
    assert accuracy[0].split() == ["Experiment", *(f"{model}.test_accuracy" for model in MODELS)]
    changes = table_lines(project, CHANGES_TABLE)
    assert changes[0].split() == ["Experiment", "train.epochs", "evaluate.max_misclassified"]
    for experiment, epochs, pictures in (("epochs-2", "2", "20"), ("pics-10", "1", "10")):
        shown = row_values(accuracy, experiment)
        for column, value in shown.items():
            assert float(value) == pytest.approx(float(recorded[experiment][column]), abs=1e-5)
        shown = row_values(changes, experiment)
        assert shown == {"train.epochs": epochs, "evaluate.max_misclassified": pictures}
