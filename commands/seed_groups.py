"""Seed-sweep run groups: which runs share a configuration, their names and comparisons."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from commands.seed_statistics import CONFIDENCE, binomial_margin, t_interval, welch_interval

SEED_KEY = "train.seed"
PROTOCOL_KEY = "split.protocol"

# Named pairs of configurations, each side a model and the params that differ from the defaults.
# Every pair is compared under each split protocol that has runs.
COMPARISONS: tuple[tuple[tuple[str, dict[str, Any]], tuple[str, dict[str, Any]]], ...] = (
    (("regularized", {}), ("regularized", {"augment.flip_horizontal": False})),
    (
        ("regularized", {}),
        ("regularized", {"augment.flip_horizontal": False, "augment.shifts": False}),
    ),
    (
        ("regularized", {"augment.flip_horizontal": False}),
        ("regularized", {"augment.flip_horizontal": False, "augment.shifts": False}),
    ),
    (("baseline", {}), ("regularized", {})),
)


@dataclass
class Group:
    """The runs of one model that share every input except the training seed."""

    model: str
    params: dict[str, Any]
    deps: dict[str, str]
    trained_on: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    repeats: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        identity = [self.model, self.params, self.deps, self.trained_on]
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]

    @property
    def protocol(self) -> Any:
        return self.params.get(PROTOCOL_KEY)

    def values(self, section: str, metric: str) -> list[float]:
        return [run[section][metric] for run in self.runs]


def group_runs(runs: list[dict[str, Any]]) -> list[Group]:
    """Group every model's runs by that model's train-stage params (but the seed), upstream
    params, dependency hashes and the `trained_on` device and library versions.

    A seed repeated within a group (say the baseline of two sweeps that vary only augment.*,
    which it does not read) is the same training twice, so it counts once: the first run by
    experiment name is kept, and the repeat is listed with whether its numbers are identical.
    """
    groups: dict[str, Group] = {}
    for run in sorted(runs, key=lambda run: (run["experiment"], run["experiment_rev"])):
        for model, entry in sorted(run["models"].items()):
            params = {**entry["upstream_params"], **entry["params"]}
            params.pop(SEED_KEY, None)
            group = Group(model, params, entry["deps"], entry["train"]["trained_on"])
            group = groups.setdefault(group.id, group)
            record = {
                "experiment": run["experiment"],
                "experiment_rev": run["experiment_rev"],
                "seed": entry["params"].get(SEED_KEY),
                "test": entry["test"],
                "train": entry["train"],
            }
            kept = [other for other in group.runs if other["seed"] == record["seed"]]
            if not kept:
                group.runs.append(record)
                continue
            same = kept[0]["test"] == record["test"] and kept[0]["train"] == record["train"]
            group.repeats.append(
                {
                    "experiment": record["experiment"],
                    "seed": record["seed"],
                    "repeats": kept[0]["experiment"],
                    "identical": same,
                }
            )
    return sorted(groups.values(), key=lambda group: (group.model, str(group.protocol), group.id))


def lookup(params: dict[str, Any], dotted: str) -> Any:
    """The value of a dotted params key in nested `params`, or a private marker when absent."""
    value: Any = params
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return _ABSENT
        value = value[part]
    return value


_ABSENT = object()


def variations(
    groups: list[Group], defaults: dict[str, Any]
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Per group id, the params (but the protocol) that differ from `defaults` and are not
    shared by every group; and those shared by every group, named once instead."""
    differing = {
        group.id: {
            key: value
            for key, value in group.params.items()
            if key != PROTOCOL_KEY and lookup(defaults, key) != value
        }
        for group in groups
    }
    changes = list(differing.values())
    common = {
        key: value
        for key, value in (changes[0] if changes else {}).items()
        if all(key in other and other[key] == value for other in changes)
    }
    names = {
        group_id: {key: value for key, value in params.items() if key not in common}
        for group_id, params in differing.items()
    }
    return names, common


def _items(params: dict[str, Any]) -> set[tuple[str, str]]:
    return {(key, json.dumps(value, sort_keys=True)) for key, value in params.items()}


def describe(changes: dict[str, Any]) -> str:
    """A configuration's name: its params that differ from the defaults, or "default"."""
    if not changes:
        return "default"
    return ", ".join(f"{key}={format_value(value)}" for key, value in sorted(changes.items()))


def format_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool | dict | list) else str(value)


def differences(first: Group, second: Group) -> list[str]:
    """What, besides the configuration compared, differs between two groups' inputs."""
    notes = []
    if first.trained_on != second.trained_on:
        notes.append(f"trained on {first.trained_on!r} vs {second.trained_on!r}")
    shared = sorted(set(first.deps) & set(second.deps))
    changed = [path for path in shared if first.deps[path] != second.deps[path]]
    code = [path for path in changed if path.endswith(".py")]
    if code:
        notes.append("different code: " + ", ".join(code))
    # Data differs by design when the data stages' params differ; flag it only when they match.
    data_params = set(first.params) & set(second.params)
    data_params = {key for key in data_params if not key.startswith("train.")}
    if all(first.params[key] == second.params[key] for key in data_params):
        data = [path for path in changed if not path.endswith(".py")]
        if data:
            notes.append("different data with the same params: " + ", ".join(data))
    return notes


def compare(
    groups: list[Group], defaults: dict[str, Any], comparisons: tuple = COMPARISONS
) -> list[dict[str, Any]]:
    """Every configured comparison under each protocol, one row per pair of matching groups."""
    names, _ = variations(groups, defaults)
    protocols = sorted({str(group.protocol) for group in groups})
    rows = []
    for protocol in protocols:
        for (model_a, changes_a), (model_b, changes_b) in comparisons:
            firsts = _matching(groups, names, model_a, changes_a, protocol)
            seconds = _matching(groups, names, model_b, changes_b, protocol)
            for first in firsts:
                for second in seconds:
                    result = welch_interval(
                        first.values("test", "test_accuracy"),
                        second.values("test", "test_accuracy"),
                    )
                    rows.append(
                        {
                            "protocol": protocol,
                            "first": first,
                            "second": second,
                            "result": result,
                            "notes": differences(first, second),
                        }
                    )
    return rows


def _matching(
    groups: list[Group], names: dict, model: str, changes: dict, protocol: str
) -> list[Group]:
    return [
        group
        for group in groups
        if group.model == model
        and str(group.protocol) == protocol
        and _items(names[group.id]) == _items(changes)
    ]


def best_on_validation(groups: list[Group]) -> dict[str, Group]:
    """Per protocol, the group with the highest mean best-validation accuracy (test unseen)."""
    best: dict[str, tuple[float, Group]] = {}
    for group in groups:
        protocol = str(group.protocol)
        mean = t_interval(group.values("train", "val_accuracy")).mean
        if protocol not in best or mean > best[protocol][0]:
            best[protocol] = (mean, group)
    return {protocol: group for protocol, (_, group) in best.items()}


def test_set_margin(group: Group, confidence: float = CONFIDENCE) -> float | None:
    """Binomial margin of one accuracy at the group's mean, on the size of its test set."""
    scores = group.runs[0]["test"]
    if scores["test_accuracy"] >= 1:
        return None
    size = round(scores["test_errors"] / (1 - scores["test_accuracy"]))
    mean = t_interval(group.values("test", "test_accuracy")).mean
    return binomial_margin(mean, size, confidence)
