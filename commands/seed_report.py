"""The seed-sweep summary as data: groups, intervals, comparisons and the best configuration."""

from __future__ import annotations

from typing import Any

from commands import seed_groups
from commands.seed_statistics import CONFIDENCE, Interval, t_interval


def _interval(interval: Interval) -> dict[str, Any]:
    return {
        "n": interval.n,
        "mean": interval.mean,
        "sd": interval.sd,
        "ci_low": interval.low,
        "ci_high": interval.high,
    }


def _order(group: seed_groups.Group, config: str) -> tuple:
    return group.model, str(group.protocol), config != "default", config, group.id


def code_at_head(
    group: seed_groups.Group, head_code: dict[str, dict[str, str]] | None
) -> bool | None:
    """Whether the group's code hashes are those of HEAD's dvc.lock (None: unknown)."""
    if head_code is None:
        return None
    code = {path: digest for path, digest in group.deps.items() if path.endswith(".py")}
    return code == head_code.get(group.model)


def summarize(
    runs: list[dict[str, Any]],
    defaults: dict[str, Any],
    head_code: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Groups, comparisons and the best configuration on validation, from the runs alone.

    `head_code` holds, per model, the code hashes of the stages that make its numbers in HEAD's
    dvc.lock: each group then says whether it measured that code, and only such groups can be
    the best configuration.
    """
    groups = seed_groups.group_runs(runs)
    names, common = seed_groups.variations(groups, defaults)
    described = {group.id: seed_groups.describe(names[group.id]) for group in groups}
    at_head = {group.id: code_at_head(group, head_code) for group in groups}
    group_rows = [
        {
            "id": group.id,
            "model": group.model,
            "protocol": group.protocol,
            "config": described[group.id],
            "test_accuracy": _interval(t_interval(group.values("test", "test_accuracy"))),
            "val_accuracy": _interval(t_interval(group.values("train", "val_accuracy"))),
            "test_set_margin": seed_groups.test_set_margin(group),
            "code_at_head": at_head[group.id],
            "seeds": [run["seed"] for run in group.runs],
            "experiments": [run["experiment"] for run in group.runs],
            "repeats": group.repeats,
            "trained_on": group.trained_on,
            "params": group.params,
            "deps": group.deps,
        }
        for group in sorted(groups, key=lambda group: _order(group, described[group.id]))
    ]
    comparisons = [
        {
            "protocol": row["protocol"],
            "first": row["first"].id,
            "second": row["second"].id,
            "first_name": f"{row['first'].model}, {described[row['first'].id]}",
            "second_name": f"{row['second'].model}, {described[row['second'].id]}",
            "difference": row["result"].difference,
            "ci_low": row["result"].low,
            "ci_high": row["result"].high,
            "dof": row["result"].dof,
            "excludes_zero": row["result"].excludes_zero,
            "notes": row["notes"],
        }
        for row in seed_groups.compare(groups, defaults)
    ]
    current = [group for group in groups if at_head[group.id] is not False]
    best = {
        protocol: group.id for protocol, group in seed_groups.best_on_validation(current).items()
    }
    # The best config's groups under every protocol: a choice made on one protocol's
    # validation set is then read on each protocol's test set.
    by_id = {group.id: group for group in current}
    same_config = {
        chosen: _counterparts(by_id[chosen], current, described) for chosen in best.values()
    }
    return {
        "confidence": CONFIDENCE,
        "common_params": common,
        "groups": group_rows,
        "comparisons": comparisons,
        "best_on_validation": best,
        "same_config": same_config,
    }


def _counterparts(
    chosen: seed_groups.Group, groups: list[seed_groups.Group], described: dict[str, str]
) -> dict[str, list[str]]:
    """Per protocol, the groups of `chosen`'s model and config, trained alike on the same code."""
    matches: dict[str, list[str]] = {}
    for group in groups:
        alike = (group.model, described[group.id], group.trained_on) == (
            chosen.model,
            described[chosen.id],
            chosen.trained_on,
        )
        code = [path for path in chosen.deps if path.endswith(".py")]
        if alike and all(group.deps.get(path) == chosen.deps[path] for path in code):
            matches.setdefault(str(group.protocol), []).append(group.id)
    return matches
