"""The report's paired comparisons on fabricated trials and predictions with a known answer (issue 17, part 4)."""

import numpy as np
import pandas as pd
import pytest

from mmap_ray.report.load import prepare
from mmap_ray.report.paired import affinity_stability, compare_trials, scheme_comparisons, verdict
from mmap_ray.stats import Difference

TASKS = ("Art", "Clipart")
N = 40  # test images per task


def _study(correct: dict[str, float], seeds=(0, 1, 2), data_per_seed=True):
    """Trials and predictions: scheme -> share of images it gets right (the first images of each task)."""
    trials, preds = [], []
    for scheme, shares in correct.items():
        for seed in seeds:
            share = shares[seed] if isinstance(shares, tuple) else shares
            rng = np.random.default_rng(seed if data_per_seed else 0)
            labels = rng.integers(0, 12, size=N)
            ok = np.arange(N) < round(share * N)
            trials.append(
                {
                    "config_id": f"c-{scheme}",
                    "seed": seed,
                    "scheme": scheme,
                    "status": "TERMINATED",
                    "test_mean": 100 * share,
                }
            )
            for task in TASKS:
                for i in range(N):
                    pred = labels[i] if ok[i] else (labels[i] + 1) % 12
                    preds.append(
                        {"config_id": f"c-{scheme}", "seed": seed, "task": task, "image": i, "label": labels[i]}
                        | {"prediction": pred, "correct": bool(ok[i])}
                    )
    return prepare(pd.DataFrame(trials)), pd.DataFrame(preds)


def test_a_known_difference_is_found_both_ways():
    trials, preds = _study({"single": 0.5, "gradient": 0.75})
    table = scheme_comparisons(trials, preds)
    assert list(table["scheme"]) == ["gradient"] and table["seeds"].iloc[0] == 3
    by_seed, both = compare_trials(trials, preds, [(s, "c-gradient", "c-single") for s in (0, 1, 2)])
    assert by_seed.diff == pytest.approx(25) and both.diff == pytest.approx(25)
    assert both.n == 3 and both.low > 15 and both.high < 35 and both.p < 0.01  # 3 seeds, images within
    assert table["verdict"].iloc[0] == "better"


def test_identical_trials_are_no_detectable_difference():
    trials, preds = _study({"single": 0.6, "random": 0.6})
    row = scheme_comparisons(trials, preds).iloc[0]
    assert row["verdict"] == "no detectable difference" and row["seeds + images (95% bootstrap)"] == "+0.0 [+0.0, +0.0]"


def test_images_that_do_not_pair_give_no_image_interval():
    trials, preds = _study({"single": 0.5, "gradient": 0.75})
    other = preds["config_id"] == "c-gradient"
    preds.loc[other, "label"] = (preds.loc[other, "label"] + 3) % 12  # not the same images
    by_seed, both = compare_trials(trials, preds, [(s, "c-gradient", "c-single") for s in (0, 1, 2)])
    assert by_seed is not None and both is None
    assert compare_trials(trials, pd.DataFrame(), [(0, "c-gradient", "c-single")])[1] is None


def test_verdict_needs_every_interval_to_exclude_zero():
    yes, no = Difference(0.02, 0.01, 0.03, 10), Difference(0.02, -0.01, 0.05, 3)
    assert verdict(yes, yes) == "better" and verdict(yes, no) == "no detectable difference"
    assert verdict(Difference(-0.02, -0.03, -0.01, 9), None) == "worse" and verdict(None, None) == "–"
    assert verdict(yes, yes, adjusted_p=0.2) == "no detectable difference"  # Holm over the table said so


def test_the_seeds_and_images_interval_carries_the_seed_spread():
    """Gradient beats single by 25 points on two seeds and loses 5 on the third: resampling the images alone
    would call that better (thousands of images), resampling seeds and then images does not."""
    from mmap_ray.stats import paired_bootstrap

    trials, preds = _study({"single": 0.5, "gradient": (0.75, 0.75, 0.45)})
    by_seed, both = compare_trials(trials, preds, [(s, "c-gradient", "c-single") for s in (0, 1, 2)])
    keyed = preds.sort_values(["config_id", "seed", "task", "image"])
    a = keyed[keyed["config_id"] == "c-gradient"]["correct"].to_numpy()
    b = keyed[keyed["config_id"] == "c-single"]["correct"].to_numpy()
    mine = keyed[keyed["config_id"] == "c-gradient"]
    groups = (mine["seed"].astype(str) + "/" + mine["task"]).to_numpy()
    images_only = paired_bootstrap(a, b, groups)
    assert images_only.detectable and images_only.low > 10  # the checkpoints' uncertainty only
    assert both.low < images_only.low - 10 and both.high - both.low > 2 * (images_only.high - images_only.low)
    assert by_seed.mde is not None and by_seed.mde > by_seed.diff  # 3 seeds this spread cannot detect +15


def test_a_tables_comparisons_are_holm_adjusted_as_one_family():
    from mmap_ray.stats import holm

    trials, preds = _study({"single": 0.5, "gradient": (0.6, 0.55, 0.62), "random": (0.52, 0.47, 0.55)})
    table = scheme_comparisons(trials, preds).set_index("scheme")
    raw = {}
    for scheme in ("gradient", "random"):
        raw[scheme] = compare_trials(trials, preds, [(s, f"c-{scheme}", "c-single") for s in (0, 1, 2)])[0].p
    expected = dict(zip(raw, holm(list(raw.values()))))
    for scheme, p in expected.items():
        assert table.loc[scheme, "p (Holm)"] == f"{p:.3f}" and p >= raw[scheme]
    assert table.loc["random", "verdict"] == "no detectable difference"


def test_affinity_stability_is_the_correlation_across_seeds():
    a = np.array([[1.0, 0.2, 0.9], [0.2, 1.0, 0.1], [0.9, 0.1, 1.0]])
    saved = {f"gradient/{s}": {"matrix": a.tolist()} for s in (0, 1)} | {
        "lookahead/0": {"matrix": a.tolist()},
        "lookahead/1": {"matrix": (-a).tolist()},
    }
    table = affinity_stability(saved).set_index("scheme")
    assert table.loc["gradient", "correlation across seeds (mean)"] == pytest.approx(1.0)
    assert table.loc["lookahead", "(lowest)"] == pytest.approx(-1.0) and table.loc["lookahead", "seeds"] == 2
