"""Paired statistics (`mmap_ray.stats`) against references written from their definitions, on fabricated
predictions with a known answer, and `mmap-ray eval --predictions` / `mmap-ray compare` end to end."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mmap_ray.backbone import TINY_MODEL
from mmap_ray.cli import main
from mmap_ray.stats import mcnemar, paired_bootstrap, seed_interval


def mcnemar_reference(only_a: int, only_b: int) -> float:
    """Exact McNemar from its definition: under H0 each discordant image is equally likely to favour either
    run; p = the probability of every split of the n discordant images at most as likely as the observed."""
    n = only_a + only_b
    prob = [math.comb(n, i) / 2**n for i in range(n + 1)]
    return min(1.0, sum(q for q in prob if q <= prob[only_a] * (1 + 1e-12)))


@pytest.mark.parametrize("only_a, only_b", [(a, b) for a in range(0, 13, 3) for b in range(0, 13, 4)])
def test_mcnemar_matches_its_definition(only_a, only_b):
    a = np.array([1] * only_a + [0] * only_b + [1] * 5 + [0] * 7, dtype=bool)  # + concordant images
    b = np.array([0] * only_a + [1] * only_b + [1] * 5 + [0] * 7, dtype=bool)
    got_a, got_b, p = mcnemar(a, b)
    assert (got_a, got_b) == (only_a, only_b)
    assert p == pytest.approx(mcnemar_reference(only_a, only_b), abs=1e-12)


@pytest.mark.parametrize("only_a, only_b", [(1200, 1320), (2400, 2410), (1000, 2000)])
def test_mcnemar_beyond_exact_integer_sums_still_matches_its_definition(only_a, only_b):
    """Past 2,000 discordant images the tail is summed in log space (exact integers took minutes at DomainNet's
    size, where `compare` hung): the same p to 1e-10 relative."""
    a = np.array([1] * only_a + [0] * only_b, dtype=bool)
    got_a, got_b, p = mcnemar(a, ~a)
    assert (got_a, got_b) == (only_a, only_b)
    assert p == pytest.approx(mcnemar_reference(only_a, only_b), rel=1e-10, abs=1e-300)


def test_mcnemar_known_values():
    assert mcnemar(np.ones(10, bool), np.ones(10, bool))[2] == 1.0  # no discordant image: no evidence
    assert mcnemar(np.ones(10, bool), np.zeros(10, bool))[2] == pytest.approx(2 / 1024)


def index_bootstrap(a, b, groups, n_boot, seed):
    """The reference paired bootstrap: resample image indices with replacement within each task."""
    rng = np.random.default_rng(seed)
    out = np.zeros(n_boot)
    tasks = np.unique(groups)
    for g in tasks:
        idx = np.flatnonzero(groups == g)
        draws = rng.choice(idx, size=(n_boot, len(idx)), replace=True)
        out += (a[draws].astype(float) - b[draws]).mean(axis=1)
    return out / len(tasks)


def fabricated(n_per_task=(400, 1200), flip=(0.10, 0.02), seed=1):
    """Two runs on two tasks: B is A with a known share of A's right answers turned wrong, per task."""
    rng = np.random.default_rng(seed)
    a, b, groups = [], [], []
    for t, (n, f) in enumerate(zip(n_per_task, flip)):
        at = rng.random(n) < 0.8
        bt = at & ~(rng.random(n) < f / 0.8)
        a.append(at), b.append(bt), groups.append(np.full(n, t))
    return np.concatenate(a), np.concatenate(b), np.concatenate(groups)


def test_paired_bootstrap_matches_index_resampling_and_weights_tasks_equally():
    a, b, groups = fabricated()
    got = paired_bootstrap(a, b, groups, n_boot=20_000, seed=0)
    per_task = [(a[groups == g].mean() - b[groups == g].mean()) for g in (0, 1)]
    assert got.diff == pytest.approx(100 * np.mean(per_task))  # in points; the mean over tasks, not over images
    assert got.diff != pytest.approx(100 * (a.mean() - b.mean()))  # (which would weight the big task 3x)
    ref = 100 * np.quantile(index_bootstrap(a, b, groups, 4_000, seed=1), [0.025, 0.975])
    assert got.low == pytest.approx(ref[0], abs=0.4) and got.high == pytest.approx(ref[1], abs=0.4)
    assert got.detectable and got.verdict == "better" and got.n == len(a)


def test_paired_bootstrap_identical_runs_and_noise():
    a, _, groups = fabricated()
    same = paired_bootstrap(a, a, groups)
    assert (same.diff, same.low, same.high) == (0.0, 0.0, 0.0) and same.verdict == "no detectable difference"
    rng = np.random.default_rng(3)
    noise = paired_bootstrap(rng.random(3000) < 0.7, rng.random(3000) < 0.7)  # two coin-flip runs
    assert noise.low < 0 < noise.high and not noise.detectable


def test_paired_bootstrap_refuses_unpaired_input():
    with pytest.raises(ValueError, match=r"two equal-length, non-empty 1-d arrays, got \(3,\) and \(2,\)"):
        paired_bootstrap(np.ones(3), np.ones(2))


def test_seed_interval_is_the_t_interval():
    d = seed_interval(np.array([1.0, 2.0, 3.0]))  # points
    half = 4.303 * 1.0 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert d.diff == pytest.approx(2.0) and (d.low, d.high) == pytest.approx((2.0 - half, 2.0 + half))
    assert str(d) == "+2.0 [-0.5, +4.5]" and not d.detectable
    assert seed_interval(np.array([1.0])) is None and seed_interval(np.array([1.0, np.nan])) is None


# ---- the commands ------------------------------------------------------------------------------------

EVAL = ["eval", "--model", TINY_MODEL, "--pretrained", "none", "--domains", "Art,Clipart", "--shots", "2"]


def test_eval_predictions_and_compare(tmp_path, capsys):
    zero, prompted = tmp_path / "zero.parquet", tmp_path / "prompted.parquet"
    assert main([*EVAL, "--predictions", str(zero)]) == 0
    assert main([*EVAL, "--layers", "0-1", "--n-tokens", "4", "--init-std", "0.5", "--predictions", str(prompted)]) == 0
    out = capsys.readouterr().out
    rows = pd.read_parquet(zero)  # any Parquet reader
    assert list(rows.columns) == ["task", "image", "label", "prediction", "correct"]
    assert set(rows["task"]) == {"Art", "Clipart"} and (rows["correct"] == (rows["label"] == rows["prediction"])).all()
    acc = rows.groupby("task")["correct"].mean()
    assert f"Art {100 * acc['Art']:.1f}" in out  # the printed accuracy is the file's
    assert main(["compare", str(prompted), str(zero)]) == 0
    table = capsys.readouterr().out
    assert "A - B, 95% CI (points)" in table and "McNemar p" in table
    assert [line.split()[0] for line in table.splitlines()[-3:]] == ["Art", "Clipart", "mean"]
    assert main(["compare", str(zero), str(zero)]) == 0
    assert capsys.readouterr().out.count("no detectable difference") == 3


def test_compare_refuses_predictions_on_other_images(tmp_path, capsys):
    art, both = tmp_path / "art.parquet", tmp_path / "both.parquet"
    assert main([*EVAL, "--predictions", str(both)]) == 0
    assert main([*EVAL[:-4], "--domains", "Art", "--shots", "2", "--predictions", str(art)]) == 0
    capsys.readouterr()
    assert main(["compare", str(art), str(both)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmap-ray compare: error: ") and "are predictions on different images" in err
    (tmp_path / "notes.parquet").write_text("not parquet")
    assert main(["compare", str(tmp_path / "notes.parquet"), str(both)]) == 2
    assert "is not a Parquet file" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "nope.parquet"), str(both)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_t_distribution_matches_its_closed_forms_and_the_quantile_tables():
    """t(1) is Cauchy and t(2) has a closed form; the t(0.975) and t(0.80) tables are its quantiles."""
    from mmap_ray.stats import T80, T975, t_cdf

    for t in (-3.0, -0.5, 0.0, 0.7, 2.5, 12.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-9)
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-9)
    for df in range(1, 31):
        assert t_cdf(T975[df - 1], df) == pytest.approx(0.975, abs=2e-4)
        assert t_cdf(T80[df - 1], df) == pytest.approx(0.80, abs=1e-3)


def test_seed_interval_p_value_and_minimum_detectable_effect():
    """p is the two-sided t test; at a true effect equal to the MDE, the test detects it about 80% of the time."""
    from mmap_ray.stats import t_cdf

    d = np.array([0.01, 0.03, 0.02, 0.05])
    got = seed_interval(d)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(4))
    assert got.p == pytest.approx(2 * (1 - t_cdf(t, 3)))
    assert got.mde == pytest.approx((3.182 + 0.978) * d.std(ddof=1) / math.sqrt(4))  # t(0.975, 3) + t(0.80, 3)
    rng = np.random.default_rng(0)
    sd, n = 0.05, 10
    effect = (2.262 + 0.883) * sd / math.sqrt(n)  # the MDE at the true spread, df = 9
    hits = [seed_interval(rng.normal(effect, sd, n)).detectable for _ in range(4000)]
    assert 0.74 < np.mean(hits) < 0.86


def test_holm_adjustment_by_hand():
    from mmap_ray.stats import holm

    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, None, 0.9]) == [1.0, None, 1.0]  # 2 x 0.5 caps at 1, and the larger p never drops below
    assert holm([]) == []


def test_hierarchical_bootstrap_resamples_seeds_then_images():
    from mmap_ray.stats import hierarchical_bootstrap

    rng = np.random.default_rng(1)
    tasks = np.repeat(["a", "b"], 500)
    one = [(rng.choice([-1, 0, 1], size=1000, p=[0.1, 0.7, 0.2]), tasks)]
    single = hierarchical_bootstrap(one, n_boot=20_000)
    a, b = (one[0][0] == 1).astype(int), (one[0][0] == -1).astype(int)
    images = paired_bootstrap(a, b, tasks, n_boot=20_000)
    assert single.diff == pytest.approx(images.diff) and single.n == 1  # one seed: the image bootstrap
    assert single.low == pytest.approx(images.low, abs=0.5) and single.high == pytest.approx(images.high, abs=0.5)
    spread = [(np.where(np.arange(1000) < k, 1, 0), tasks) for k in (300, 0, 600)]  # seeds at +30, 0, +60 points
    many = hierarchical_bootstrap(spread)
    assert many.diff == pytest.approx(30) and many.n == 3 and many.low < 5 and many.high > 55  # the seeds
    none = hierarchical_bootstrap([(np.zeros(100, dtype=int), np.zeros(100))] * 3)
    assert none.p == 1.0 and (none.low, none.high) == (0.0, 0.0)
    with pytest.raises(ValueError, match="at least one seed"):
        hierarchical_bootstrap([])
