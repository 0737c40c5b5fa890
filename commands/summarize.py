"""Summarise DVC seed-sweep experiments: per-configuration means with 95% confidence intervals."""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from commands import seed_groups, seed_markdown, seed_readme, seed_report
from mnist_cnn import io

TEST_METRICS = "metrics/test.json"
TRAIN_METRICS = "metrics/train/{model}/metrics.json"
TRAIN_STAGE_PREFIX = "train-"


class SummaryError(Exception):
    """A failure the user can act on: printed as one line, without a traceback."""


def stage_params(stage: dict[str, Any]) -> dict[str, Any]:
    """The params a dvc.lock stage read, by key, whatever params file holds them."""
    return {
        key: value for values in stage.get("params", {}).values() for key, value in values.items()
    }


def upstream_stages(stages: dict[str, dict[str, Any]], name: str) -> set[str]:
    """Every stage of dvc.lock whose outputs feed `name`, directly or through other stages."""
    producers = {
        out["path"]: stage for stage, lock in stages.items() for out in lock.get("outs", [])
    }
    found: set[str] = set()
    pending = [name]
    while pending:
        for dep in stages[pending.pop()].get("deps", []):
            for out, producer in producers.items():
                feeds = dep["path"] == out or dep["path"].startswith(out + "/")
                if feeds and producer not in found:
                    found.add(producer)
                    pending.append(producer)
    return found


def model_entries(lock: dict[str, Any], metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each trained model's stage params, upstream params, dep hashes and raw metrics."""
    stages = lock.get("stages", {})
    test = metrics.get(TEST_METRICS) or {}
    entries = {}
    for name, stage in sorted(stages.items()):
        if not name.startswith(TRAIN_STAGE_PREFIX):
            continue
        model = name.removeprefix(TRAIN_STAGE_PREFIX)
        train = (metrics.get(TRAIN_METRICS.format(model=model)) or {}).get(model, {})
        if "test_accuracy" not in test.get(model, {}):
            raise SummaryError(f"{TEST_METRICS} has no {model}.test_accuracy")
        for key in ("val_accuracy", "trained_on"):
            if key not in train:
                raise SummaryError(f"{TRAIN_METRICS.format(model=model)} has no {model}.{key}")
        upstream: dict[str, Any] = {}
        for producer in sorted(upstream_stages(stages, name)):
            upstream.update(stage_params(stages[producer]))
        entries[model] = {
            "stage": name,
            "params": stage_params(stage),
            "upstream_params": upstream,
            # The train stage's data and code, and the code of every stage that shapes its numbers.
            "deps": {**_hashes(stage.get("deps", [])), **stage_code(stages, name)},
            "test": test[model],
            "train": train,
        }
    if not entries:
        raise SummaryError(f"dvc.lock has no {TRAIN_STAGE_PREFIX}* stage")
    return entries


def _hashes(deps: list[dict[str, Any]]) -> dict[str, str]:
    return {dep["path"]: dep.get(dep.get("hash", "md5")) for dep in deps}


def stage_code(stages: dict[str, dict[str, Any]], name: str) -> dict[str, str]:
    """Hashes of the `.py` files of the stages that make a model's numbers: its train stage,
    every stage feeding it, and the stage writing the test metrics."""
    measuring = {name, *upstream_stages(stages, name)}
    measuring |= {
        stage
        for stage, lock in stages.items()
        if any(out["path"] == TEST_METRICS for out in lock.get("outs", []))
    }
    return {
        path: digest
        for stage in sorted(measuring)
        for path, digest in _hashes(stages[stage].get("deps", [])).items()
        if path.endswith(".py")
    }


def code_hashes(lock: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Per model in `lock`, the code hashes that `stage_code` gives for its train stage."""
    stages = lock.get("stages", {})
    return {
        name.removeprefix(TRAIN_STAGE_PREFIX): stage_code(stages, name)
        for name in stages
        if name.startswith(TRAIN_STAGE_PREFIX)
    }


def collect_runs(
    root: Path, *, revs: list[str] | None = None, names: list[str] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, dict[str, str]] | None, list[str]]:
    """Finished experiments of `root` as run records, params.yaml at HEAD, each model's code
    hashes in dvc.lock at HEAD (None without one), and warnings."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.repo.experiments.utils import exp_refs
    from scmrepo.exceptions import SCMError

    try:
        with Repo(str(root)) as repo:
            head = repo.scm.get_fs("HEAD")
            defaults = yaml.safe_load(head.open("params.yaml").read()) or {}
            head_code = None
            if head.exists("dvc.lock"):
                head_code = code_hashes(yaml.safe_load(head.open("dvc.lock").read()) or {})
            # experiments.show() covers only the baselines it is given: find every commit that
            # has finished experiments from the refs, read-only (experiments.ls() takes the
            # repository's lock, which running experiments may need).
            baselines = sorted({ref.baseline_sha for ref in exp_refs(repo.scm)})
            if revs:
                wanted = {repo.scm.resolve_rev(rev) for rev in revs}
                baselines = [rev for rev in baselines if rev in wanted]
            states = []
            if baselines:
                states = repo.experiments.show(
                    revs=baselines,
                    hide_queued=True,
                    hide_failed=True,
                    hide_workspace=True,
                    sha_only=True,
                )
            runs, warnings = [], []
            for baseline in states:
                for exp_range in baseline.experiments or []:
                    executor = exp_range.executor
                    if executor is not None and executor.state != "success":
                        continue
                    name = exp_range.name or ""
                    if names and not any(fnmatch.fnmatchcase(name, p) for p in names):
                        continue
                    tip = exp_range.revs[0]
                    try:
                        runs.append(run_record(repo, baseline.rev, name, tip))
                    except SummaryError as error:
                        warnings.append(f"skipped experiment {name} ({tip.rev[:7]}): {error}")
    except (DvcException, SCMError) as error:
        raise SummaryError(f"{root}: {error}") from error
    return runs, defaults, head_code, warnings


def run_record(repo, baseline_rev: str, name: str, state) -> dict[str, Any]:
    """One finished experiment: its revs, seed, and per model the inputs and raw metrics."""
    if state.error or state.data is None:
        raise SummaryError(state.error.msg if state.error else "no data")
    metrics = {path: result.get("data") for path, result in state.data.metrics.items()}
    lock = yaml.safe_load(repo.scm.get_fs(state.rev).open("dvc.lock").read())
    models = model_entries(lock, metrics)
    seeds = {entry["params"].get(seed_groups.SEED_KEY) for entry in models.values()}
    return {
        "experiment": name,
        "experiment_rev": state.rev,
        "baseline_rev": baseline_rev,
        "seed": seeds.pop() if len(seeds) == 1 else sorted(seeds, key=str),
        "models": models,
    }


def load_runs(path: Path) -> list[dict[str, Any]]:
    """The runs recorded in an earlier summary, or none when it does not exist yet."""
    if not path.exists():
        return []
    try:
        runs = json.loads(path.read_text())["runs"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise SummaryError(f"{path}: not a summary written by this command ({error})") from error
    if not isinstance(runs, list):
        raise SummaryError(f"{path}: 'runs' is not a list")
    return runs


def merge_runs(existing: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All runs, one per experiment rev (a newer record replaces an older one of the same rev)."""
    by_rev = {run["experiment_rev"]: run for run in existing}
    by_rev.update({run["experiment_rev"]: run for run in new})
    return sorted(by_rev.values(), key=lambda run: (run["experiment"], run["experiment_rev"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", type=Path, default=Path("."), help="the DVC repository")
    parser.add_argument("--json", type=Path, default=Path("results/seeds.json"))
    parser.add_argument("--markdown", type=Path, default=Path("docs/results.md"))
    parser.add_argument(
        "--readme",
        type=Path,
        help="also rewrite the results table between this file's results markers (README.md)",
    )
    parser.add_argument(
        "--rev",
        action="append",
        help="only experiments based on this commit (repeatable; default: every commit)",
    )
    parser.add_argument(
        "--name", action="append", help="only experiments whose name matches this glob (repeatable)"
    )
    args = parser.parse_args(argv)
    existing = load_runs(args.json)
    new, defaults, head_code, warnings = collect_runs(args.repo, revs=args.rev, names=args.name)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    runs = merge_runs(existing, new)
    if not runs:
        raise SummaryError(f"no finished experiments in {args.repo} and none in {args.json}")
    summary = seed_report.summarize(runs, defaults, head_code)
    io.write_text(args.json, json.dumps({**summary, "runs": runs}, indent=1) + "\n")
    io.write_text(args.markdown, seed_markdown.markdown(summary, source=args.json))
    if args.readme is not None:
        try:
            readme = args.readme.read_text()
            block = seed_readme.readme_block(summary, details=str(args.markdown))
            io.write_text(args.readme, seed_readme.replace_readme_block(readme, block))
        except (OSError, ValueError) as error:
            raise SummaryError(f"{args.readme}: {error}") from None
    added = len(
        {run["experiment_rev"] for run in new} - {run["experiment_rev"] for run in existing}
    )
    print(f"{len(runs)} runs ({added} new) -> {args.json}, {args.markdown}")


if __name__ == "__main__":
    try:
        main()
    except SummaryError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
