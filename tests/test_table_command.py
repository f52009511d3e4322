"""`causalclip table`: evaluation folders -> the paper's table format."""

import pandas as pd
import pytest

from causalclip.cli.main import main


def _eval_dir(tmp_path, name, ap):
    d = tmp_path / name
    d.mkdir()
    gens = ["stable_diffusion_v_1_4", "progan", "biggan"]
    pd.DataFrame({"generator": gens + ["mean"], "ap": ap + [sum(ap) / 3], "acc": [0.5] * 4}).to_csv(
        d / "metrics.csv", index=False
    )
    return d


def test_table_rows_are_the_metrics_in_percent(tmp_path, capsys):
    a = _eval_dir(tmp_path, "a", [0.9, 0.8, 0.7])
    b = _eval_dir(tmp_path, "b", [0.95, 0.6, 0.5])
    assert main(["table", f"mine={a}", str(b), "--setting", "none", "--format", "csv"]) == 0
    out = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out), index_col=0)
    assert list(out.index) == ["mine", "b"]
    assert out.loc["mine", "SD1.4"] == pytest.approx(90.0)
    assert out.loc["b", "BigGAN"] == pytest.approx(50.0)
    assert out.loc["mine", "Avg"] == pytest.approx(80.0)  # mean of the three sets, the "mean" row is not a set


def test_table_with_paper_rows_and_latex(tmp_path, capsys):
    a = _eval_dir(tmp_path, "a", [0.9, 0.8, 0.7])
    out_file = tmp_path / "t.tex"
    assert main(["table", str(a), "--setting", "sd14", "--format", "latex", "--out", str(out_file)]) == 0
    tex = out_file.read_text()
    assert "CausalCLIP (paper)" in tex and "\\textbf" in tex and "90.00" in tex


def test_table_missing_metrics_is_a_clear_error(tmp_path, capsys):
    assert main(["table", str(tmp_path / "nope")]) == 2
    assert "no metrics.csv" in capsys.readouterr().err
