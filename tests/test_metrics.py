"""Metrics against sklearn and hand-made cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, average_precision_score

from causalclip import MetricsError
from causalclip.metrics.binary import balanced_indices, binary_metrics, per_generator_metrics, probe_accuracy


def test_hand_made_case():
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.6, 0.4, 0.9])
    m = binary_metrics(labels, scores)
    # ranking: 0.9(+) 0.6(-) 0.4(+) 0.1(-): AP = (1/1 + 2/3) / 2
    assert m["ap"] == pytest.approx((1 + 2 / 3) / 2)
    assert (m["acc"], m["real_acc"], m["fake_acc"]) == (0.5, 0.5, 0.5)
    assert (m["n_real"], m["n_fake"]) == (2, 2)


def test_threshold_is_strict_like_the_reference_code():
    m = binary_metrics(np.array([0, 1]), np.array([0.5, 0.5]))
    assert m["real_acc"] == 1.0 and m["fake_acc"] == 0.0  # 0.5 is "real": score > 0.5 means fake


def test_against_sklearn_random_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.random(500), 1)  # many ties
    m = binary_metrics(labels, scores)
    assert m["ap"] == pytest.approx(average_precision_score(labels, scores))
    assert m["acc"] == pytest.approx(accuracy_score(labels, scores > 0.5))


def test_one_class_is_a_clear_error_not_nan():
    with pytest.raises(MetricsError, match="generator 'sd14'.*0 real and 3 fake"):
        per_generator_metrics(pd.DataFrame({"generator": "sd14", "label": [1, 1, 1], "score": [0.2, 0.5, 0.9]}))
    with pytest.raises(MetricsError, match="NaN"):
        binary_metrics(np.array([0, 1]), np.array([np.nan, 0.3]))


def test_per_generator_and_mean_row():
    df = pd.DataFrame(
        {
            "generator": ["a"] * 4 + ["b"] * 2,
            "label": [0, 1, 0, 1, 0, 1],
            "score": [0.1, 0.9, 0.2, 0.8, 0.7, 0.3],
        }
    )
    t = per_generator_metrics(df)
    assert list(t["generator"]) == ["a", "b", "mean"]
    assert list(t.loc[0, ["ap", "acc"]]) == [1.0, 1.0] and list(t.loc[1, ["ap", "acc"]]) == [0.5, 0.0]
    assert t.loc[2, "acc"] == 0.5 and t.loc[2, "n_real"] == 3


def test_balanced_indices_properties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 1000)
    groups = rng.choice(["x", "y", "z"], 1000)
    idx = balanced_indices(labels, groups, seed=1, max_per_class=100)
    assert len(set(idx)) == len(idx)
    for g in "xyz":
        sel = idx[groups[idx] == g]
        n0, n1 = (labels[sel] == 0).sum(), (labels[sel] == 1).sum()
        assert n0 == n1 == min(100, (labels[groups == g] == 0).sum(), (labels[groups == g] == 1).sum())
    np.testing.assert_array_equal(idx, balanced_indices(labels, groups, seed=1, max_per_class=100))
    assert not np.array_equal(idx, balanced_indices(labels, groups, seed=2, max_per_class=100))


def test_probe_accuracy_detects_information():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    x_info = rng.normal(size=(2000, 10)) + y[:, None]
    x_none = rng.normal(size=(2000, 10))
    assert probe_accuracy(x_info, y) > 0.9
    assert abs(probe_accuracy(x_none, y) - 0.5) < 0.06
    assert abs(probe_accuracy(np.zeros((2000, 10)), y) - 0.5) < 0.06  # constant features: chance, no crash


def test_loss_is_the_log_loss():
    from sklearn.metrics import log_loss

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 200)
    scores = rng.random(200)
    assert binary_metrics(labels, scores)["loss"] == pytest.approx(log_loss(labels, scores))


def test_one_class_error_names_the_test_set_and_generator():
    df = pd.DataFrame(
        {"generator": ["sd14"] * 3 + ["adm"] * 2, "label": [1, 1, 1, 0, 1], "score": [0.2, 0.5, 0.9, 0.1, 0.8]}
    )
    with pytest.raises(MetricsError, match=r"test set feats/genimage-test, generator 'sd14'.*0 real and 3 fake"):
        per_generator_metrics(df, sources={"sd14": "feats/genimage-test", "adm": "feats/genimage-test"})
    reals = df.assign(label=0)
    with pytest.raises(MetricsError, match="generator 'sd14'.*3 real and 0 fake"):
        per_generator_metrics(reals)


def test_empty_predictions_are_an_error_not_a_nan_row():
    with pytest.raises(MetricsError, match="no predictions"):
        per_generator_metrics(pd.DataFrame({"generator": [], "label": [], "score": []}))
    with pytest.raises(MetricsError, match="missing column 'score'"):
        per_generator_metrics(pd.DataFrame({"generator": ["a"], "label": [0]}))


def test_oracle_column_is_an_upper_bound_and_existing_columns_are_kept():
    rng = np.random.default_rng(1)
    df = pd.DataFrame(
        {"generator": rng.choice(["a", "b", "c"], 300), "label": rng.integers(0, 2, 300), "score": rng.random(300)}
    )
    t = per_generator_metrics(df)
    assert list(t.columns) == ["generator", "n_real", "n_fake", "ap", "acc", "real_acc", "fake_acc", "acc_oracle"]
    assert t.notna().all().all()
    for _, r in t.iloc[:-1].iterrows():
        grp = df[df["generator"] == r["generator"]]
        # brute force over every threshold at a score value (and below all of them)
        cuts = np.r_[-1.0, np.sort(grp["score"].to_numpy())]
        best = max(((grp["score"] > c) == grp["label"]).mean() for c in cuts)
        assert r["acc_oracle"] == pytest.approx(best) and r["acc_oracle"] >= r["acc"]
    assert t.iloc[-1]["acc_oracle"] == pytest.approx(t["acc_oracle"][:-1].mean())
