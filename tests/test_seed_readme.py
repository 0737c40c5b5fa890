"""The README's generated results: table, ablation verdicts, best configuration, stale code."""

from __future__ import annotations

import pytest
from scipy import stats

from commands import seed_markdown, seed_readme, seed_report, summarize
from tests.seed_runs import (
    BASELINE,
    CPU,
    DEFAULTS,
    GPU,
    REGULARIZED,
    VALIDATION_PAIR,
    lock_for,
    make_run,
    sweep,
)


def expected_sentence(
    part: str, first: list[float], second: list[float], words=("helps", "hurts")
) -> str:
    """The verdict sentence for `first` minus `second`, computed by scipy alone."""
    result = stats.ttest_ind(first, second, equal_var=False)
    interval = result.confidence_interval(0.95)
    difference = 100 * (sum(first) / len(first) - sum(second) / len(second))
    if interval.low < 0 < interval.high:
        verdict = "no effect this sweep can tell from seed noise"
    else:
        verdict = words[0] if difference > 0 else words[1]
    numbers = f"{difference:+.3f} points, 95 % CI [{100 * interval.low:+.3f}, "
    return f"- {part}: {verdict} ({numbers}{100 * interval.high:+.3f}])."


def test_readme_block_answers_the_ablation_from_welch_intervals():
    summary = seed_report.summarize(sweep(), DEFAULTS)
    block = seed_readme.readme_block(summary, details="docs/results.md")
    default, noflip, noaug = (
        REGULARIZED["article", True, True],
        REGULARIZED["article", False, True],
        REGULARIZED["article", False, False],
    )
    flips = expected_sentence("Horizontal flips (article protocol)", default, noflip)
    shifts = expected_sentence("1-pixel shifts (article protocol)", noflip, noaug)
    assert flips in block and shifts in block
    # The data were built so that shifts clearly help and flips do not.
    assert "1-pixel shifts (article protocol): helps" in shifts
    assert "Horizontal flips (article protocol): helps" not in block
    # No official noflip group: the official protocol gets no ablation sentence.
    assert "shifts (official protocol)" not in block and "flips (official protocol)" not in block
    mean, sd = sum(default) / 3, stats.tstd(default)
    low, high = stats.t.interval(0.95, 2, loc=mean, scale=stats.sem(default))
    row = (
        f"| regularized | article | default | {100 * mean:.2f} ± {100 * sd:.2f} (3) | "
        f"[{100 * low:.3f}, {100 * high:.3f}] | 99.5 |"
    )
    assert row in block
    assert "every row: train.threads=1" in block
    assert f"Of the {len(summary['comparisons'])} comparisons in docs/results.md" in block
    # Regularized minus baseline, per protocol, read from the baseline-first comparison.
    for protocol, baseline in BASELINE.items():
        regularized = REGULARIZED[protocol, True, True]
        part = f"Regularized against baseline ({protocol} protocol)"
        sentence = expected_sentence(part, regularized, baseline, ("better", "worse"))
        assert sentence in block
        assert f"{part}: better (+" in sentence
    assert block.startswith(seed_readme.README_START) and block.endswith(seed_readme.README_END)


def test_best_configuration_is_reported_on_every_protocol_it_ran_on():
    summary = seed_report.summarize(sweep(), DEFAULTS)
    block = seed_readme.readme_block(summary, details="docs/results.md")
    lines = [line for line in block.splitlines() if line.startswith("- official: ")]
    assert len(lines) == 1
    # Official's best on validation is the default config, which also ran on article.
    article = REGULARIZED["article", True, True]
    official = REGULARIZED["official", True, True]
    for protocol, values in (("article", article), ("official", official)):
        mean, sd = 100 * sum(values) / 3, 100 * stats.tstd(values)
        assert f"{protocol} {mean:.3f} ± {sd:.3f} % (mean ± sd, n=3)" in lines[0]
    # Article's best (no augmentation) never ran on official: only its article figure.
    (line,) = [line for line in block.splitlines() if line.startswith("- article: ")]
    assert "augment.shifts=false" in line and "official " not in line


def test_groups_of_older_code_are_marked_and_left_out_of_the_readme():
    accuracy, validation = {"baseline": 0.9911, "regularized": 0.9939}, VALIDATION_PAIR
    runs = sweep() + [make_run(f"new-s{s}", s, accuracy, validation, code="v2") for s in (1, 2)]
    head_code = summarize.code_hashes(lock_for(DEFAULTS, "v2"))
    assert set(head_code) == {"baseline", "regularized"}
    summary = seed_report.summarize(runs, DEFAULTS, head_code)
    current = [group for group in summary["groups"] if group["code_at_head"]]
    assert {(group["model"], group["test_accuracy"]["n"]) for group in current} == {
        ("baseline", 2),
        ("regularized", 2),
    }
    assert sum(group["code_at_head"] is False for group in summary["groups"]) == 6
    text = seed_markdown.markdown(summary, source="results/seeds.json")
    assert text.count("| **no** | `") == 6 and text.count("| yes | `") == 2
    block = seed_readme.readme_block(summary, details="docs/results.md")
    assert block.count("| regularized |") == 1 and block.count("| baseline |") == 1
    assert "Not shown: 6 group(s) that measured code other than dvc.lock's at HEAD" in block
    # Only a group of HEAD's code can be the best: here the new regularized one, on article.
    (new_regularized,) = [group["id"] for group in current if group["model"] == "regularized"]
    assert summary["best_on_validation"] == {"article": new_regularized}
    best_lines = [line for line in block.splitlines() if line.startswith("- article: ")]
    assert len(best_lines) == 1 and f"(`{new_regularized}`)" in best_lines[0]
    assert "- official: " not in block
    # Without HEAD's dvc.lock nothing is known, and nothing is left out.
    unknown = seed_report.summarize(runs, DEFAULTS)
    assert {group["code_at_head"] for group in unknown["groups"]} == {None}
    assert "Not shown" not in seed_readme.readme_block(unknown, details="docs/results.md")
    # A dvc.lock at HEAD without these models: no group measured its code.
    foreign = seed_report.summarize(runs, DEFAULTS, {})
    assert {group["code_at_head"] for group in foreign["groups"]} == {False}
    assert foreign["best_on_validation"] == {}


def test_evaluate_and_upstream_code_are_part_of_a_groups_identity():
    lock = lock_for(DEFAULTS, "v1")
    code = summarize.code_hashes(lock)
    assert set(code["baseline"]) == {"stages/train.py", "stages/evaluate.py"}
    assert set(code["regularized"]) == {
        "stages/train.py",
        "stages/augment.py",
        "stages/evaluate.py",
    }
    accuracy = {"baseline": 0.9911, "regularized": 0.9939}
    runs = [make_run(f"e1-s{s}", s, accuracy, VALIDATION_PAIR) for s in (1, 2)]
    runs += [make_run(f"e2-s{s}", s, accuracy, VALIDATION_PAIR, evaluate_code="e2") for s in (1, 2)]
    head_code = summarize.code_hashes(lock_for(DEFAULTS, "v1", evaluate_code="e2"))
    summary = seed_report.summarize(runs, DEFAULTS, head_code)
    # Same train code, other evaluate code: separate groups, and only e2's are at HEAD.
    assert len(summary["groups"]) == 4
    for group in summary["groups"]:
        assert group["code_at_head"] == group["experiments"][0].startswith("e2-")


def test_best_configuration_is_read_only_where_code_and_device_match():
    accuracy = {"baseline": 0.99, "regularized": 0.98}
    lower = {"baseline": 0.99, "regularized": 0.994}
    others = [
        make_run(f"gpu-s{s}", s, accuracy, lower, trained_on=GPU, split__protocol="official")
        for s in (1, 2)
    ] + [
        make_run(f"v2-s{s}", s, accuracy, lower, code="v2", split__protocol="official")
        for s in (1, 2)
    ]
    summary = seed_report.summarize(sweep() + others, DEFAULTS)
    groups = {group["id"]: group for group in summary["groups"]}
    chosen = summary["best_on_validation"]["official"]
    assert (groups[chosen]["model"], groups[chosen]["config"]) == ("regularized", "default")
    assert (
        groups[chosen]["trained_on"] == CPU and groups[chosen]["experiments"][0] == "off-default-s1"
    )
    article = [
        group["id"]
        for group in groups.values()
        if (group["model"], group["protocol"], group["config"])
        == ("regularized", "article", "default")
    ]
    assert summary["same_config"][chosen] == {"article": article, "official": [chosen]}
    line = seed_markdown.best_sentence(summary, "official")
    assert "98.000" not in line and line.count("(mean ± sd, n=3)") == 2


def test_readme_block_replaces_only_the_marked_part():
    text = f"intro\n{seed_readme.README_START}\nold\n{seed_readme.README_END}\noutro\n"
    replaced = seed_readme.replace_readme_block(text, "NEW")
    assert replaced == "intro\nNEW\noutro\n"
    with pytest.raises(ValueError, match="no <!-- results:start -->"):
        seed_readme.replace_readme_block("no markers here", "NEW")
