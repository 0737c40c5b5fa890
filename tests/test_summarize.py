"""The seed-sweep summary: statistics against scipy, grouping, merging, and real queued runs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest
from scipy import stats

from commands import seed_groups, seed_markdown, seed_report, summarize
from tests.conftest import ROOT, dvc, git
from tests.seed_runs import (
    BASELINE,
    CPU,
    DEFAULTS,
    GPU,
    REGULARIZED,
    VALIDATION_PAIR,
    by_model,
    lock_for,
    make_run,
    sweep,
)


def test_baseline_groups_ignore_augment_and_count_each_seed_once():
    groups = by_model(seed_groups.group_runs(sweep()))
    # Baseline: one group per protocol, not per augmentation; repeats of a seed count once.
    assert sorted(group.protocol for group in groups["baseline"]) == ["article", "official"]
    for group in groups["baseline"]:
        assert [run["seed"] for run in group.runs] == [1, 2, 3]
        values = group.values("test", "test_accuracy")
        assert values == BASELINE[group.protocol]
    article = next(group for group in groups["baseline"] if group.protocol == "article")
    assert [run["experiment"] for run in article.runs] == [f"art-default-s{s}" for s in (1, 2, 3)]
    assert len(article.repeats) == 6 and all(repeat["identical"] for repeat in article.repeats)
    # Regularized: the data hashes of each augmentation split it; the seed never does.
    assert len(groups["regularized"]) == 4
    assert {len(group.runs) for group in groups["regularized"]} == {3}
    found = sorted(group.values("test", "test_accuracy") for group in groups["regularized"])
    assert found == sorted(REGULARIZED.values())


def test_device_and_code_never_share_a_group_and_comparisons_say_so():
    accuracy = {"baseline": 0.9911, "regularized": 0.9939}
    validation = {"baseline": 0.99, "regularized": 0.995}
    runs = [
        make_run("cpu-s1", 1, accuracy, validation),
        make_run("cpu-s2", 2, accuracy, validation),
        make_run("gpu-s1", 1, accuracy, validation, trained_on=GPU, augment__flip_horizontal=False),
        make_run("gpu-s2", 2, accuracy, validation, trained_on=GPU, augment__flip_horizontal=False),
        make_run("new-s1", 1, accuracy, validation, code="v2"),
    ]
    groups = by_model(seed_groups.group_runs(runs))
    assert len(groups["baseline"]) == 3 and len(groups["regularized"]) == 3
    assert {group.trained_on for group in groups["baseline"]} == {CPU, GPU}
    rows = seed_groups.compare(seed_groups.group_runs(runs), DEFAULTS)
    flips = [row for row in rows if row["second"].params["augment.flip_horizontal"] is False]
    # The default config matches two groups (old and new code): one comparison each.
    assert len(flips) == 2
    assert all(any(note.startswith("trained on") for note in row["notes"]) for row in flips)
    code = [note for row in flips for note in row["notes"] if note.startswith("different code")]
    assert code == ["different code: stages/train.py"]
    # Baseline "default" is three groups (it reads no augment.* param), regularized two.
    models = [row for row in rows if row["first"].model == "baseline"]
    assert len(models) == 6
    for row in models:
        first, second = row["first"], row["second"]
        alike = (
            first.trained_on == second.trained_on
            and first.deps["stages/train.py"] == (second.deps["stages/train.py"])
        )
        assert (row["notes"] == []) == alike, row["notes"]


def test_summary_names_configs_and_computes_every_interval():
    summary = seed_report.summarize(sweep(), DEFAULTS)
    assert summary["common_params"] == {"train.threads": 1}
    configs = {(group["model"], group["protocol"], group["config"]) for group in summary["groups"]}
    assert configs == {
        ("baseline", "article", "default"),
        ("baseline", "official", "default"),
        ("regularized", "article", "default"),
        ("regularized", "article", "augment.flip_horizontal=false"),
        ("regularized", "article", "augment.flip_horizontal=false, augment.shifts=false"),
        ("regularized", "official", "default"),
    }
    for group in summary["groups"]:
        params, result = group["params"], group["test_accuracy"]
        if group["model"] == "baseline":
            values = BASELINE[group["protocol"]]
        else:
            flip, shifts = params["augment.flip_horizontal"], params["augment.shifts"]
            values = REGULARIZED[group["protocol"], flip, shifts]
        mean = sum(values) / 3
        assert (result["n"], result["mean"]) == (3, pytest.approx(mean, abs=1e-15))
        assert result["sd"] == pytest.approx(stats.tstd(values), rel=1e-12)
        interval = stats.t.interval(0.95, 2, loc=mean, scale=stats.sem(values))
        assert (result["ci_low"], result["ci_high"]) == pytest.approx(interval, rel=1e-12)
        # One accuracy on 10,000 images at about 99.4 % is uncertain by about 0.15 points.
        margin = 1.959964 * math.sqrt(mean * (1 - mean) / 1e4)
        assert group["test_set_margin"] == pytest.approx(margin)
        assert 0.0014 < group["test_set_margin"] < 0.0020
    pairs = {
        (row["protocol"], row["first_name"], row["second_name"]) for row in summary["comparisons"]
    }
    noflip, noaug = (
        "regularized, augment.flip_horizontal=false",
        "regularized, augment.flip_horizontal=false, augment.shifts=false",
    )
    assert pairs == {
        ("article", "regularized, default", noflip),
        ("article", "regularized, default", noaug),
        ("article", noflip, noaug),
        ("article", "baseline, default", "regularized, default"),
        ("official", "baseline, default", "regularized, default"),
    }
    row = next(
        row
        for row in summary["comparisons"]
        if row["second_name"] == noaug and row["first_name"] == "regularized, default"
    )
    expected = stats.ttest_ind(
        REGULARIZED["article", True, True], REGULARIZED["article", False, False], equal_var=False
    ).confidence_interval(0.95)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((expected.low, expected.high))
    assert row["excludes_zero"] is True and row["notes"] == []


def test_best_configuration_is_chosen_on_validation_not_test():
    summary = seed_report.summarize(sweep(), DEFAULTS)
    groups = {group["id"]: group for group in summary["groups"]}
    noaug = "augment.flip_horizontal=false, augment.shifts=false"
    best = groups[summary["best_on_validation"]["article"]]
    assert (best["model"], best["config"]) == ("regularized", noaug)
    article = [group for group in groups.values() if group["protocol"] == "article"]
    best_test = max(article, key=lambda group: group["test_accuracy"]["mean"])
    assert best_test["config"] == "augment.flip_horizontal=false"
    official = groups[summary["best_on_validation"]["official"]]
    assert (official["model"], official["config"]) == ("regularized", "default")
    text = seed_markdown.markdown(summary, source="results/seeds.json")
    assert f"- article: regularized, {noaug}" in text


def test_markdown_states_scope_and_a_single_run_has_no_interval():
    runs = sweep()[:1]
    summary = seed_report.summarize(runs, DEFAULTS)
    assert all(group["test_accuracy"]["ci_low"] is None for group in summary["groups"])
    text = seed_markdown.markdown(summary, source="results/seeds.json")
    assert "training seeds only" in text and "±0.15 points" in text
    assert text.count("none: one run") == 2
    assert "| baseline | article | default | 1 | 99.110 | none: one run |" in text


def test_an_experiment_without_the_metrics_is_refused_by_name():
    run = make_run("old", 1, {"baseline": 0.99, "regularized": 0.99}, VALIDATION_PAIR)
    lock = lock_for(DEFAULTS, "v1")
    old_format = {"metrics/test.json": {"baseline": {"accuracy": 0.99}}}
    with pytest.raises(summarize.SummaryError, match=r"metrics/test.json has no baseline.test_acc"):
        summarize.model_entries(lock, old_format)
    metrics = {"metrics/test.json": {name: entry["test"] for name, entry in run["models"].items()}}
    with pytest.raises(summarize.SummaryError, match=r"baseline/metrics.json has no baseline.val"):
        summarize.model_entries(lock, metrics)


def test_merging_twice_adds_no_duplicates():
    runs = sweep()
    merged = summarize.merge_runs([], runs[:5])
    again = summarize.merge_runs(merged, runs[:5])
    assert again == merged and len(merged) == 5
    grown = summarize.merge_runs(again, runs)
    assert len(grown) == len(runs) == len({run["experiment_rev"] for run in grown})


def run_command(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "commands.summarize", *args], cwd=cwd, capture_output=True, text=True
    )


def test_errors_are_one_line(tmp_path):
    broken = tmp_path / "seeds.json"
    broken.write_text("{not json")
    for args, expected in (
        (["--repo", str(tmp_path), "--json", str(broken)], str(broken)),
        (["--repo", str(tmp_path), "--json", str(tmp_path / "new.json")], str(tmp_path)),
    ):
        result = run_command(*args)
        assert result.returncode == 1
        assert result.stderr.startswith("error: ") and expected in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def wait_for_experiments(project, count: int, deadline: float) -> dict[str, str]:
    """Poll `dvc exp show` until `count` experiments succeeded; restart a queue worker that left
    queued experiments behind (the celery filesystem broker can stop a worker early)."""
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        shown = json.loads(dvc(project, "exp", "show", "--json").stdout)
        states = {
            exp_range["name"]: (exp_range.get("executor") or {}).get("state", "success")
            for baseline in shown
            for exp_range in baseline.get("experiments") or []
        }
        assert "failed" not in states.values(), states
        if list(states.values()).count("success") == count:
            return states
        if "running" not in states.values() and "queued" in states.values():
            dvc(project, "queue", "start", "-j", "1")
        time.sleep(2)
    raise AssertionError(f"experiments not finished in time: {states}")


def git_output(cwd, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout


def test_summarizes_real_queued_experiments(project, tmp_path):
    for seed in (1, 2):
        dvc(project, "exp", "run", "--queue", "-S", f"train.seed={seed}", "-n", f"seed-{seed}")
    dvc(project, "queue", "start", "-j", "1")
    try:
        wait_for_experiments(project, 2, time.monotonic() + 900)
    finally:
        dvc(project, "queue", "stop", check=False)
    output, report = tmp_path / "seeds.json", tmp_path / "seeds.md"
    args = ["--repo", str(project), "--json", str(output), "--markdown", str(report)]
    # First only seed-1 (TensorFlow must never load), then everything: the JSON gains seed-2.
    code = (
        "import sys; from commands import summarize; summarize.main(sys.argv[1:]); "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    first = subprocess.run(
        [sys.executable, "-c", code, *args, "--name", "seed-1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert first.returncode == 0, first.stderr
    assert [run["experiment"] for run in json.loads(output.read_text())["runs"]] == ["seed-1"]
    second = run_command(*args)
    assert second.returncode == 0 and "2 runs (1 new)" in second.stdout, second.stderr
    summary = json.loads(output.read_text())
    groups = {group["model"]: group for group in summary["groups"]}
    assert set(groups) == {"baseline", "regularized"} and len(summary["groups"]) == 2
    assert {group["test_accuracy"]["n"] for group in groups.values()} == {2}
    assert sorted(groups["baseline"]["seeds"]) == [1, 2]
    head = git_output(project, "rev-parse", "HEAD").strip()
    assert sorted(run["experiment"] for run in summary["runs"]) == ["seed-1", "seed-2"]
    for run in summary["runs"]:
        rev = run["experiment_rev"]
        assert run["baseline_rev"] == head
        ref = f"refs/exps/{head[:2]}/{head[2:]}/{run['experiment']}"
        assert git_output(project, "rev-parse", ref).strip() == rev
        test = json.loads(git_output(project, "show", f"{rev}:metrics/test.json"))
        for model, entry in run["models"].items():
            train = git_output(project, "show", f"{rev}:metrics/train/{model}/metrics.json")
            assert entry["test"] == test[model]
            assert entry["train"] == json.loads(train)[model]
            assert entry["params"]["train.seed"] == run["seed"]
    assert "| baseline | article | default | 2 |" in report.read_text()
    # Once more: nothing new, no duplicates.
    third = run_command(*args)
    assert third.returncode == 0 and "2 runs (0 new)" in third.stdout, third.stderr
    assert json.loads(output.read_text())["runs"] == summary["runs"]
    # No dvc.lock at HEAD: whether a group measured HEAD's code is unknown.
    assert {group["code_at_head"] for group in summary["groups"]} == {None}
    # An experiment's dvc.lock committed at HEAD: both groups measured HEAD's code.
    git(project, "checkout", summary["runs"][0]["experiment_rev"], "--", "dvc.lock")
    git(project, "commit", "-q", "-m", "dvc.lock of an experiment")
    fourth = run_command(*args)
    assert fourth.returncode == 0 and "2 runs (0 new)" in fourth.stdout, fourth.stderr
    groups = json.loads(output.read_text())["groups"]
    assert [group["code_at_head"] for group in groups] == [True, True]
