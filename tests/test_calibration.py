"""Thresholds: oracle, balanced-accuracy and target-FPR calibration against brute force and sklearn's ROC curve;
threshold.json written by training and by `causalclip calibrate`; calibrated/oracle columns in evaluation."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_curve

from causalclip import evaluate, load_head, open_feature_set, predict, resolve_run_config, train, write_feature_set
from causalclip.cli.main import main
from causalclip.metrics.binary import per_generator_metrics
from causalclip.metrics.errors import MetricsError
from causalclip.metrics.thresholds import (
    CalibrationError,
    accuracy_at,
    balanced_accuracy_threshold,
    calibration_record,
    fpr_threshold,
    oracle_accuracy,
    oracle_threshold,
    read_threshold,
    write_threshold,
)


def _rates(labels, scores, t):
    labels, scores = np.asarray(labels), np.asarray(scores)
    pred = scores > t
    return pred[labels == 0].mean(), pred[labels == 1].mean()  # fpr, tpr


def _acc(labels, scores, t):
    return float(((np.asarray(scores) > t) == np.asarray(labels)).mean())


def _brute_thresholds(scores):
    """Every distinct cut: below all scores, and at each score value (score > t is fake)."""
    s = np.unique(scores)
    return np.r_[s[0] - 1.0, s]


def _random_case(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    labels = rng.integers(0, 2, n)
    labels[0], labels[1] = 0, 1  # both classes
    scores = np.round(rng.random(n) + 0.3 * labels, int(rng.integers(1, 3)))  # coarse rounding: many ties
    return labels, scores


# ---- hand-made cases ----------------------------------------------------------------------------------------------


def test_separable_case_thresholds_sit_in_the_gap():
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.8, 0.9])
    assert balanced_accuracy_threshold(labels, scores) == pytest.approx(0.5)
    assert oracle_threshold(labels, scores) == pytest.approx(0.5)
    assert oracle_accuracy(labels, scores) == 1.0
    assert accuracy_at(labels, scores, 0.5) == 1.0
    assert accuracy_at([0, 1], [0.5, 0.5], 0.5) == 0.5  # strict: a score equal to the threshold is "real"


def test_balanced_accuracy_differs_from_accuracy_on_imbalanced_data():
    # 8 reals at 0.1..0.8, 3 fakes at 0.45, 0.46 and 0.95.
    labels = np.array([0] * 8 + [1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.45, 0.46, 0.95])
    # accuracy: calling only 0.95 fake gets 9 of 11 right; the cut lies in the gap 0.8 | 0.95
    assert oracle_accuracy(labels, scores) == pytest.approx(9 / 11)
    assert oracle_threshold(labels, scores) == pytest.approx(0.875)
    # balanced accuracy: the cut 0.4 | 0.45 catches every fake and keeps 4 of 8 reals: (4/8 + 3/3) / 2 = 0.75,
    # better than the accuracy-optimal cut's (8/8 + 1/3) / 2 = 0.667
    assert balanced_accuracy_threshold(labels, scores) == pytest.approx(0.425)


def test_fpr_threshold_hand_made():
    labels = np.zeros(10, dtype=int)
    scores = np.arange(1, 11) / 10  # 0.1 .. 1.0
    assert fpr_threshold(labels, scores, 0.2) == pytest.approx(0.8)  # 0.9 and 1.0 above: 2 of 10
    assert fpr_threshold(labels, scores, 0.25) == pytest.approx(0.8)  # floor(2.5) = 2 allowed
    assert fpr_threshold(labels, scores, 0.3) == pytest.approx(0.7)  # 0.3 * 10 is 3.0000000000000004 in floats
    assert fpr_threshold(labels, scores, 0.0) == pytest.approx(1.0)
    t1 = fpr_threshold(labels, scores, 1.0)
    assert t1 < 0.1 and accuracy_at(labels, scores, t1) == 0.0  # everything above: FPR 1 allowed
    # floating-point: 0.29 * 100 = 28.999999999999996 must still allow 29 reals above
    s100 = np.arange(100) / 100
    t = fpr_threshold(np.zeros(100, dtype=int), s100, 0.29)
    assert (s100 > t).sum() == 29


def test_fpr_threshold_ignores_fakes_and_never_splits_ties():
    labels = np.array([0] * 10 + [1] * 3)
    scores = np.array([0.5] * 5 + [0.1] * 5 + [0.05, 0.3, 0.99])
    # 30% allowed = 3 reals; cutting at 0.1 would put all five 0.5s above -> the threshold must be 0.5
    t = fpr_threshold(labels, scores, 0.3)
    assert t == 0.5
    assert _rates(labels, scores, t)[0] == 0.0
    # the fakes do not move it
    assert fpr_threshold(labels[:10], scores[:10], 0.3) == t


def test_ties_fall_on_one_side():
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.5, 0.2, 0.5, 0.9, 0.5, 0.5])
    for fn in (balanced_accuracy_threshold, oracle_threshold):
        t = fn(labels, scores)
        # the rule is strict, so all four 0.5s get the same prediction whatever t is
        assert len(set((scores[scores == 0.5] > t).tolist())) == 1


# ---- against brute force and sklearn -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_against_brute_force_and_roc_curve(seed):
    labels, scores = _random_case(seed)
    n_real, n_fake = (labels == 0).sum(), (labels == 1).sum()
    brute = [_acc(labels, scores, t) for t in _brute_thresholds(scores)]
    assert oracle_accuracy(labels, scores) == pytest.approx(max(brute))
    assert _acc(labels, scores, oracle_threshold(labels, scores)) == pytest.approx(max(brute))
    assert accuracy_at(labels, scores, scores[0]) == _acc(labels, scores, scores[0])

    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    assert oracle_accuracy(labels, scores) == pytest.approx(np.max((tpr * n_fake + (1 - fpr) * n_real) / len(labels)))
    t = balanced_accuracy_threshold(labels, scores)
    f, p = _rates(labels, scores, t)
    assert (p + 1 - f) / 2 == pytest.approx(np.max((tpr + 1 - fpr) / 2))

    for target in (0.0, 0.05, 0.1, 0.37, 0.5, 1.0):
        t = fpr_threshold(labels, scores, target)
        f, p = _rates(labels, scores, t)
        assert f <= target + 1e-12
        assert p == pytest.approx(tpr[fpr <= target + 1e-12].max())  # the best detection rate allowed
        lower = np.nextafter(t, -np.inf)  # any lower threshold breaks the target (unless t calls all fake)
        if lower >= scores.min():
            assert _rates(labels, scores, lower)[0] > target


def test_all_equal_scores():
    labels = np.array([0, 1, 0, 1])
    scores = np.full(4, 0.7)
    t = balanced_accuracy_threshold(labels, scores)
    assert math.isfinite(t)
    f, p = _rates(labels, scores, t)
    assert (p + 1 - f) / 2 == 0.5
    assert oracle_accuracy(labels, scores) == 0.5
    assert _rates(labels, scores, fpr_threshold(labels, scores, 0.1))[0] == 0.0


# ---- errors --------------------------------------------------------------------------------------------------------


def test_one_class_is_a_clear_error_naming_the_set():
    fakes = np.array([1, 1, 1]), np.array([0.2, 0.5, 0.9])
    for fn in (balanced_accuracy_threshold, oracle_threshold, oracle_accuracy):
        with pytest.raises(CalibrationError, match="val set /data/v.*0 real and 3 fake"):
            fn(*fakes, name="val set /data/v")
    with pytest.raises(CalibrationError, match="val set /data/v: FPR calibration needs real samples"):
        fpr_threshold(*fakes, 0.05, name="val set /data/v")
    # reals only: FPR works, balanced accuracy does not
    assert fpr_threshold(np.zeros(3, dtype=int), fakes[1], 0.0) == 0.9
    with pytest.raises(CalibrationError, match="3 real and 0 fake"):
        balanced_accuracy_threshold(np.zeros(3, dtype=int), fakes[1], name="x")
    assert issubclass(CalibrationError, MetricsError) and issubclass(CalibrationError, ValueError)


@pytest.mark.parametrize(
    ("labels", "scores", "match"),
    [
        ([], [], "no samples"),
        ([0, 1], [0.1, np.nan], "NaN"),
        ([0, 1], [0.1], "must be 1-D and equal"),
        ([0, 2], [0.1, 0.2], "labels must be 0"),
    ],
)
def test_bad_input(labels, scores, match):
    for call in (
        lambda: balanced_accuracy_threshold(labels, scores, name="S"),
        lambda: oracle_accuracy(labels, scores, name="S"),
        lambda: fpr_threshold(labels, scores, 0.1, name="S"),
    ):
        with pytest.raises(CalibrationError, match=f"S: .*{match}"):
            call()


@pytest.mark.parametrize("target", [-0.1, 1.5, float("nan"), "x", True])
def test_target_fpr_must_be_a_rate(target):
    with pytest.raises(CalibrationError, match="target FPR"):
        fpr_threshold([0, 0], [0.1, 0.2], target)


def test_record_and_file_round_trip(tmp_path):
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.6, 0.7, 0.9])
    rec = calibration_record(labels, scores, source="feats/val")
    assert rec["method"] == "val_balanced_acc" and rec["source"] == "feats/val"
    assert (rec["n_real"], rec["n_fake"]) == (3, 2) and rec["threshold"] == pytest.approx(0.65)
    assert rec["val_balanced_acc"] == 1.0
    fpr_rec = calibration_record(labels[:3], scores[:3], target_fpr=0.34, source="reals")
    assert fpr_rec["method"] == "val_target_fpr" and fpr_rec["target_fpr"] == 0.34 and fpr_rec["n_fake"] == 0
    assert fpr_rec["threshold"] == 0.2 and fpr_rec["val_fpr"] == pytest.approx(1 / 3)
    assert "val_fake_acc" not in fpr_rec and "val_balanced_acc" not in fpr_rec
    write_threshold(tmp_path, rec)
    assert read_threshold(tmp_path) == json.loads(json.dumps(rec))
    assert read_threshold(tmp_path / "nothing") is None
    (tmp_path / "threshold.json").write_text('{"threshold": "high", "method": "x"}')
    with pytest.raises(CalibrationError, match="threshold.json: 'threshold' must be a finite number"):
        read_threshold(tmp_path)
    (tmp_path / "threshold.json").write_text("{not json")
    with pytest.raises(CalibrationError, match="threshold.json: cannot read JSON"):
        read_threshold(tmp_path)


# ---- metrics table columns -----------------------------------------------------------------------------------------


def test_per_generator_oracle_and_calibrated_columns():
    rng = np.random.default_rng(5)
    df = pd.DataFrame(
        {"generator": np.repeat(["a", "b"], 50), "label": np.tile([0, 1], 50), "score": np.round(rng.random(100), 2)}
    )
    base = per_generator_metrics(df)
    cal = per_generator_metrics(df, calibrated_threshold=0.3)
    pd.testing.assert_frame_equal(cal[base.columns], base)  # existing columns unchanged
    for i, g in enumerate("ab"):
        grp = df[df["generator"] == g]
        brute = max(_acc(grp["label"], grp["score"], t) for t in _brute_thresholds(grp["score"]))
        assert cal.loc[i, "acc_oracle"] == pytest.approx(brute)
        assert cal.loc[i, "acc_oracle"] >= max(cal.loc[i, "acc"], cal.loc[i, "acc_calibrated"])
        assert cal.loc[i, "acc_calibrated"] == pytest.approx(((grp["score"] > 0.3) == grp["label"]).mean())
        assert cal.loc[i, "real_acc_calibrated"] == pytest.approx((grp["score"][grp["label"] == 0] <= 0.3).mean())
    assert cal.loc[2, "acc_calibrated"] == pytest.approx(cal["acc_calibrated"][:2].mean())
    assert (cal["threshold_calibrated"] == 0.3).all()


# ---- runs: threshold.json from training, `causalclip calibrate`, evaluation --------------------------------------


@pytest.fixture(scope="module")
def run(scm_sets, tmp_path_factory):
    out = tmp_path_factory.mktemp("cal") / "run"
    rc = resolve_run_config("univfd", overrides={"epochs": 2, "batch_size": 64, "lr": 1e-3})
    train(train_set=scm_sets["train"], val_set=scm_sets["val"], out=out, run_config=rc, progress=False)
    return out


def test_training_writes_a_balanced_accuracy_threshold(run, scm_sets):
    rec = json.loads((run / "threshold.json").read_text())
    assert {"threshold", "method", "source", "n_real", "n_fake"} <= set(rec)
    va = open_feature_set(scm_sets["val"])
    assert rec["method"] == "val_balanced_acc" and rec["source"] == str(va.root)
    assert (rec["n_real"], rec["n_fake"]) == (int((va.labels == 0).sum()), int((va.labels == 1).sum()))
    scores = predict(load_head(run).head, va)
    assert rec["threshold"] == pytest.approx(balanced_accuracy_threshold(va.labels, scores))
    fpr, tpr, _ = roc_curve(va.labels, scores, drop_intermediate=False)
    assert rec["val_balanced_acc"] == pytest.approx(np.max((tpr + 1 - fpr) / 2))


def test_evaluate_adds_oracle_and_calibrated_columns(run, scm_sets, tmp_path):
    res = evaluate(run, [scm_sets["test"]], out=tmp_path / "e")
    t = json.loads((run / "threshold.json").read_text())["threshold"]
    m = pd.read_csv(tmp_path / "e" / "metrics.csv")
    assert list(m.columns[:7]) == ["generator", "n_real", "n_fake", "ap", "acc", "real_acc", "fake_acc"]
    assert {"acc_oracle", "acc_calibrated", "threshold_calibrated"} <= set(m.columns)
    assert res.calibration["threshold"] == t and (m["threshold_calibrated"] == t).all()
    preds = res.predictions
    for i, g in enumerate(m["generator"][:-1]):
        grp = preds[preds["generator"] == g]
        assert m.loc[i, "acc_calibrated"] == pytest.approx(((grp["score"] > t) == grp["label"]).mean())
        assert m.loc[i, "acc"] == pytest.approx(((grp["score"] > 0.5) == grp["label"]).mean())
        assert m.loc[i, "acc_oracle"] == pytest.approx(oracle_accuracy(grp["label"], grp["score"]))
        assert m.loc[i, "acc_oracle"] >= max(m.loc[i, "acc"], m.loc[i, "acc_calibrated"]) - 1e-12


def test_evaluate_without_threshold_json_has_no_calibrated_columns(run, scm_sets, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(run / name, bare / name)
    res = evaluate(bare, [scm_sets["test"]])
    assert "acc_oracle" in res.metrics.columns and "acc_calibrated" not in res.metrics.columns
    assert res.calibration is None


def test_evaluate_one_class_error_names_set_and_generator(run, tmp_path):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"path": [f"p{i}" for i in range(10)], "label": 1, "generator": "onlyfake"})
    root = write_feature_set(tmp_path / "onefake", rng.normal(size=(10, 48)).astype(np.float32), df)
    with pytest.raises(MetricsError, match=f"test set {root}, generator 'onlyfake'.*0 real and 10 fake"):
        evaluate(run, [root])


def test_calibrate_cli_target_fpr_on_real_only_set(run, scm_sets, tmp_path, capsys):
    import shutil

    r = tmp_path / "run"
    shutil.copytree(run, r)
    va = open_feature_set(scm_sets["val"])
    real = np.flatnonzero(va.labels == 0)
    reals = write_feature_set(
        tmp_path / "reals", va.take(real), va.samples.iloc[real].reset_index(drop=True), meta=va.meta | {}
    )
    assert main(["calibrate", str(r), "--val", str(reals), "--target-fpr", "0.05"]) == 0
    assert "threshold" in capsys.readouterr().out
    rec = json.loads((r / "threshold.json").read_text())
    assert rec["method"] == "val_target_fpr" and rec["target_fpr"] == 0.05 and rec["n_fake"] == 0
    scores = predict(load_head(r).head, open_feature_set(reals))
    assert (scores > rec["threshold"]).mean() <= 0.05
    assert (scores > np.nextafter(rec["threshold"], -np.inf)).mean() > 0.05  # the smallest such threshold
    # balanced accuracy needs fakes: a clear one-line error naming the set
    assert main(["calibrate", str(r), "--val", str(reals)]) == 2
    err = capsys.readouterr().err
    assert str(reals) in err and "both real and fake" in err
    # the default mode on the training run's validation set reproduces the training-time threshold
    assert main(["calibrate", str(r), "--val", str(scm_sets["val"])]) == 0
    again = json.loads((r / "threshold.json").read_text())
    assert again["threshold"] == json.loads((run / "threshold.json").read_text())["threshold"]


def test_calibrate_refuses_features_made_differently(run, scm_sets, tmp_path, capsys):
    va = open_feature_set(scm_sets["val"])
    other = write_feature_set(
        tmp_path / "other", va.take(np.arange(len(va))), va.samples, meta={"backbone": {"name": "another"}}
    )
    assert main(["calibrate", str(run), "--val", str(other)]) == 2
    assert "backbone" in capsys.readouterr().err
