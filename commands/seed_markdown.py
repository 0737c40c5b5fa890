"""The seed-sweep summary as Markdown for people: docs/results.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from commands import seed_groups

SCOPE = (
    "The intervals cover the spread between training seeds only, measured on one fixed test "
    "set. They leave out the sampling error of the test set itself: one accuracy measured on "
    "10,000 test images at 99.4 % is uncertain by about ±0.15 points (binomial, "
    '1.96·√(p(1−p)/n); column "test-set ±"). Add it before comparing with figures that '
    "others measured, or measured on another test set."
)


def percent(value: float | None, digits: int = 3) -> str:
    """A fraction as a percentage with `digits` decimals, or a dash for none."""
    return "—" if value is None else f"{100 * value:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def ci_text(low: float | None, high: float | None, reason: str) -> str:
    """An interval in percent, or the reason there is none."""
    return reason if low is None else f"[{percent(low)}, {percent(high)}]"


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
        "train stage and the stages before it read, the hashes of that stage's data and of the "
        "code of every stage that made its numbers (train, the stages before it, evaluate), "
        "and the device and library versions that trained it. A config is named by its params "
        "that differ from params.yaml at HEAD"
        + ("." if common == "default" else f"; every group has {common}, not repeated below."),
        "",
        f"**Scope of the intervals.** {SCOPE}",
        "",
        "## Groups",
        "",
        "Accuracies in %; 95 % interval from Student's t with n−1 degrees of freedom. "
        '"code = HEAD": the code hashes of the stages that made the numbers (train, the stages '
        "before it, evaluate) equal those in dvc.lock at HEAD.",
        "",
    ]
    rows = []
    for group in groups.values():
        test, validation = group["test_accuracy"], group["val_accuracy"]
        spread = "" if test["sd"] is None else f" ± {percent(test['sd'])}"
        rows.append(
            [
                group["model"],
                str(group["protocol"]),
                group["config"],
                str(test["n"]),
                percent(test["mean"]) + spread,
                ci_text(test["ci_low"], test["ci_high"], "none: one run"),
                "—"
                if group["test_set_margin"] is None
                else f"±{percent(group['test_set_margin'], 2)}",
                percent(validation["mean"]),
                {None: "—", True: "yes", False: "**no**"}[group.get("code_at_head")],
                f"`{group['id']}`",
            ]
        )
    header = ["model", "protocol", "config", "n", "test mean ± sd", "95 % CI", "test-set ±"]
    lines += table(header + ["best-validation mean", "code = HEAD", "group"], rows)
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
                ci_text(row["ci_low"], row["ci_high"], "none: a group has one run or no spread"),
                "—" if row["dof"] is None else f"{row['dof']:.1f}",
                excludes,
                "; ".join(row["notes"]) or "same code and environment",
            ]
        )
    header = ["protocol", "first", "second", "difference", "95 % CI", "dof", "excludes 0"]
    lines += table(header + ["note"], rows) if rows else ["No configured pair has runs yet."]
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
    for other_protocol, group_ids in sorted(summary["same_config"][chosen["id"]].items()):
        for group_id in group_ids:
            test = groups[group_id]["test_accuracy"]
            spread = "" if test["sd"] is None else f" ± {percent(test['sd'])}"
            tests.append(
                f"{other_protocol} {percent(test['mean'])}{spread} % (mean ± sd, n={test['n']})"
            )
    return (
        f"{protocol}: {chosen['model']}, {chosen['config']} (`{chosen['id']}`): validation "
        f"{percent(validation['mean'])} % over {validation['n']} run(s); its test accuracy: "
        + "; ".join(tests)
        + "."
    )
