"""The seed-sweep summary as data for programs (JSON) and as Markdown tables for people."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from commands import seed_groups
from commands.seed_statistics import CONFIDENCE, Interval, t_interval

SCOPE = (
    "The intervals cover the spread between training seeds only, measured on one fixed test "
    "set. They leave out the sampling error of the test set itself: one accuracy measured on "
    "10,000 test images at 99.4 % is uncertain by about ±0.15 points (binomial, "
    '1.96·√(p(1−p)/n); column "test-set ±"). Add it before comparing with figures that '
    "others measured, or measured on another test set."
)


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


def code_at_head(group: seed_groups.Group, head_code: dict[str, dict[str, str]] | None) -> Any:
    """Whether the group's train-stage code hashes are those of HEAD's dvc.lock (None: unknown)."""
    if head_code is None or group.model not in head_code:
        return None
    code = {path: digest for path, digest in group.deps.items() if path.endswith(".py")}
    return code == head_code[group.model]


def summarize(
    runs: list[dict[str, Any]],
    defaults: dict[str, Any],
    head_code: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Groups, comparisons and the best configuration on validation, from the runs alone.

    `head_code` holds, per model, the `.py` dependency hashes of its train stage in HEAD's
    dvc.lock: each group then says whether it measured the code at HEAD.
    """
    groups = seed_groups.group_runs(runs)
    names, common = seed_groups.variations(groups, defaults)
    described = {group.id: seed_groups.describe(names[group.id]) for group in groups}
    group_rows = [
        {
            "id": group.id,
            "model": group.model,
            "protocol": group.protocol,
            "config": described[group.id],
            "test_accuracy": _interval(t_interval(group.values("test", "test_accuracy"))),
            "val_accuracy": _interval(t_interval(group.values("train", "val_accuracy"))),
            "test_set_margin": seed_groups.test_set_margin(group),
            "code_at_head": code_at_head(group, head_code),
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
    best = {
        protocol: group.id for protocol, group in seed_groups.best_on_validation(groups).items()
    }
    # The best config's groups under every protocol: a choice made on one protocol's
    # validation set is then read on each protocol's test set.
    by_id = {group.id: group for group in groups}
    same_config = {
        chosen: {
            str(other.protocol): other.id
            for other in groups
            if (other.model, described[other.id], other.trained_on)
            == (by_id[chosen].model, described[chosen], by_id[chosen].trained_on)
            and _same_code(other, by_id[chosen])
        }
        for chosen in best.values()
    }
    return {
        "confidence": CONFIDENCE,
        "common_params": common,
        "groups": group_rows,
        "comparisons": comparisons,
        "best_on_validation": best,
        "same_config": same_config,
    }


def _same_code(first: seed_groups.Group, second: seed_groups.Group) -> bool:
    code = [path for path in first.deps if path.endswith(".py")]
    return all(first.deps[path] == second.deps.get(path) for path in code)


def _percent(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{100 * value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _ci(low: float | None, high: float | None, reason: str) -> str:
    return reason if low is None else f"[{_percent(low)}, {_percent(high)}]"


def _group_line(group: dict[str, Any]) -> str:
    runs = ", ".join(
        f"{name} (seed {seed})"
        for name, seed in zip(group["experiments"], group["seeds"], strict=True)
    )
    line = f"- `{group['id']}`: {group['trained_on']}; {runs}."
    if group["repeats"]:
        # The same inputs and seed train the same model again: a repeat adds no information.
        names = ", ".join(repeat["experiment"] for repeat in group["repeats"])
        differing = [repeat["experiment"] for repeat in group["repeats"] if not repeat["identical"]]
        verdict = f"numbers DIFFER in {', '.join(differing)}" if differing else "identical numbers"
        line += f" Same inputs and seed again, counted once: {names} ({verdict})."
    return line


def markdown(summary: dict[str, Any], *, source: Path | str) -> str:
    """The summary as Markdown: groups, comparisons, and the best configuration on validation."""
    groups = {group["id"]: group for group in summary["groups"]}
    runs = sum(group["test_accuracy"]["n"] for group in groups.values())
    common = seed_groups.describe(summary["common_params"])
    lines = [
        "# Test accuracy over training seeds",
        "",
        f"Written by `python -m commands.summarize` from `{source}` ({runs} model runs). A group "
        "holds one model's runs whose inputs are identical but for `train.seed`: the params its "
        "train stage and the stages before it read, the hashes of that stage's code and data, "
        "and the device and library versions that trained it. A config is named by its params "
        "that differ from params.yaml at HEAD"
        + ("." if common == "default" else f"; every group has {common}, not repeated below."),
        "",
        f"**Scope of the intervals.** {SCOPE}",
        "",
        "## Groups",
        "",
        "Accuracies in %; 95 % interval from Student's t with n−1 degrees of freedom. "
        '"code = HEAD": the hashes of the train stage\'s code equal those in dvc.lock at HEAD.',
        "",
    ]
    rows = []
    for group in groups.values():
        test, validation = group["test_accuracy"], group["val_accuracy"]
        spread = "" if test["sd"] is None else f" ± {_percent(test['sd'])}"
        rows.append(
            [
                group["model"],
                str(group["protocol"]),
                group["config"],
                str(test["n"]),
                _percent(test["mean"]) + spread,
                _ci(test["ci_low"], test["ci_high"], "none: one run"),
                "—"
                if group["test_set_margin"] is None
                else f"±{_percent(group['test_set_margin'], 2)}",
                _percent(validation["mean"]),
                {None: "—", True: "yes", False: "**no**"}[group.get("code_at_head")],
                f"`{group['id']}`",
            ]
        )
    header = ["model", "protocol", "config", "n", "test mean ± sd", "95 % CI", "test-set ±"]
    lines += _table(header + ["best-validation mean", "code = HEAD", "group"], rows)
    lines += ["", "Per group: what trained it, and its runs.", ""]
    lines += [_group_line(group) for group in groups.values()]
    lines += [
        "",
        "## Comparisons",
        "",
        "Difference of mean test accuracy, first minus second, in percentage points, with its "
        "95 % Welch interval (Welch-Satterthwaite degrees of freedom).",
        "",
    ]
    rows = []
    for row in summary["comparisons"]:
        excludes = {None: "—", True: "yes", False: "no"}[row["excludes_zero"]]
        rows.append(
            [
                str(row["protocol"]),
                f"{row['first_name']} (`{row['first']}`)",
                f"{row['second_name']} (`{row['second']}`)",
                f"{100 * row['difference']:+.3f}",
                _ci(row["ci_low"], row["ci_high"], "none: a group has one run or no spread"),
                "—" if row["dof"] is None else f"{row['dof']:.1f}",
                excludes,
                "; ".join(row["notes"]) or "same code and environment",
            ]
        )
    header = ["protocol", "first", "second", "difference", "95 % CI", "dof", "excludes 0"]
    lines += _table(header + ["note"], rows) if rows else ["No configured pair has runs yet."]
    lines += [
        "",
        "## Best configuration on validation accuracy",
        "",
        "Chosen per protocol on the mean best-validation accuracy alone; the test set plays no "
        "part in the choice.",
        "",
    ]
    lines += [
        f"- {best_sentence(summary, protocol)}"
        for protocol in sorted(summary["best_on_validation"])
    ]
    return "\n".join(lines) + "\n"


def best_sentence(summary: dict[str, Any], protocol: str) -> str:
    """The best config on `protocol`'s validation set, with its test accuracy on every protocol."""
    groups = {group["id"]: group for group in summary["groups"]}
    chosen = groups[summary["best_on_validation"][protocol]]
    validation = chosen["val_accuracy"]
    tests = []
    for other_protocol, group_id in sorted(summary["same_config"][chosen["id"]].items()):
        test = groups[group_id]["test_accuracy"]
        spread = "" if test["sd"] is None else f" ± {_percent(test['sd'])}"
        tests.append(f"{other_protocol} {_percent(test['mean'])}{spread} % (n={test['n']})")
    return (
        f"{protocol}: {chosen['model']}, {chosen['config']} (`{chosen['id']}`): validation "
        f"{_percent(validation['mean'])} % over {validation['n']} run(s); its test accuracy: "
        + "; ".join(tests)
        + "."
    )
