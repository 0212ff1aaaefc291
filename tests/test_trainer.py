"""Train and export small models end to end; check the ONNX contract from the trainer's side."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from mdn_core.contract import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, parse_metadata
from mdn_core.model import load_model
from mdn_train import export, train
from mdn_train.export import restore_models

from tests.conftest import SMALL


def session_outputs(path, x):
    """The exported file as the server opens it: contract and metadata checked, then run."""
    return load_model(path).run(x)


@pytest.mark.parametrize("name", ["inverse_sine", "two_link_arm"])
def test_exported_graph_follows_the_contract_and_matches_pytorch(trained, name):
    path = trained["models"] / name / "1" / "model.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == [INPUT_NAME]
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # dynamic batch

    checkpoint = train.load_checkpoint(trained["runs"] / name / "checkpoint.pt")
    _, mdn, _ = restore_models(checkpoint)
    rng = np.random.default_rng(0)
    for batch in (1, 1000):
        x = mdn.x_norm.mean.numpy() + mdn.x_norm.std.numpy() * rng.standard_normal((batch, mdn.in_dim))
        x = x.astype(np.float32)
        w, m, s = session_outputs(path, x)
        with torch.no_grad():
            tw, tm, ts = (t.numpy() for t in mdn.mixture(torch.from_numpy(x)))
        k, d = checkpoint["config"]["model"]["components"], len(checkpoint["output_names"])
        assert w.shape == (batch, k) and m.shape == (batch, k, d) and s.shape == (batch, k, d)
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
        assert (s > 0).all()
        for got, want in ((w, tw), (m, tm), (s, ts)):
            assert np.max(np.abs(got - want)) <= 1e-5


def test_metadata_describes_the_model(trained):
    model = onnx.load(str(trained["models"] / "two_link_arm" / "1" / "model.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    meta = parse_metadata(props[METADATA_KEY])
    assert (meta.name, meta.version, meta.task) == ("two_link_arm", "1", "two_link_arm")
    assert meta.input_names == ("ee_x", "ee_y") and meta.output_names == ("theta1", "theta2")
    assert meta.components == 3
    assert meta.raw["kinematics"] == {
        "type": "planar_serial",
        "link_lengths": [0.8, 0.2],
        "joint_limits": [[0.3, 1.2], [-np.pi / 2, np.pi / 2]],
    }
    assert meta.chain is not None and meta.chain.target == "planar" and meta.chain.num_joints == 2
    assert meta.raw["config"]["model"]["hidden"] == [64, 64]
    for key in ("mdn_nll", "baseline_nll", "branch_coverage", "mdn_fk_error", "baseline_fk_error"):
        assert key in meta.raw["metrics"]
    toy = parse_metadata(
        {
            p.key: p.value
            for p in onnx.load(str(trained["models"] / "inverse_sine" / "1" / "model.onnx")).metadata_props
        }[METADATA_KEY]
    )
    assert toy.chain is None and "kinematics" not in toy.raw
    assert toy.input_names == ("t",) and "nll_gap" in toy.raw["metrics"]


def test_reports_and_plots_are_written(trained):
    for name, plots in (
        ("inverse_sine", {"toy_density.png", "toy_weights.png", "calibration.png"}),
        ("two_link_arm", {"arm_workspace_errors.png", "arm_solutions.png", "arm_ik_solutions.png", "calibration.png"}),
    ):
        run = trained["runs"] / name
        report = json.loads((run / "report.json").read_text())
        assert report["model"] == name and set(report["plots"]) == plots
        assert {p.name for p in (run / "plots").iterdir()} == plots
        assert all((run / "plots" / p).stat().st_size > 10_000 for p in plots)
        assert "| mdn_nll |" in (run / "report.md").read_text()
    toy = json.loads((trained["runs"] / "inverse_sine" / "report.json").read_text())["metrics"]
    for side in ("mdn", "baseline"):
        y = toy["calibration"][side]["outputs"]["x"]
        assert 0.0 <= y["pit_ks"] <= 1.0 and y["crps"] > 0 and 0.0 <= toy["calibration"][side]["hdr_90"] <= 1.0
    assert toy["nll_gap"] == pytest.approx(toy["mdn_nll"] - toy["optimal_nll"])
    assert toy["nll_gap"] > 0  # nothing beats the exact conditional


def test_versions_count_up_and_existing_ones_are_refused(trained, tmp_path, capsys):
    models = tmp_path / "models"
    args = ["--name", "inverse_sine", "--runs", str(trained["runs"]), "--models", str(models), "--no-plots"]
    assert export.main(args) == 0
    capsys.readouterr()
    assert export.main(args) == 0  # nothing retrained: no new version with the same weights
    assert "inverse_sine: unchanged since version 1 (same checkpoint" in capsys.readouterr().out
    assert sorted(p.name for p in (models / "inverse_sine").iterdir()) == ["1"]
    assert export.main([*args, "--force"]) == 0
    assert sorted(p.name for p in (models / "inverse_sine").iterdir()) == ["1", "2"]
    assert export.main([*args, "--version", "2"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert export.main([*args, "--version", "7"]) == 0
    assert sorted(p.name for p in (models / "inverse_sine").iterdir()) == ["1", "2", "7"]
    assert not [p for p in models.iterdir() if p.name.startswith(".")]


def test_a_failed_export_leaves_nothing_behind(trained, tmp_path, monkeypatch):
    models = tmp_path / "models"

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr(export, "evaluate", broken)
    with pytest.raises(RuntimeError, match="evaluation broke"):
        export.export_run(trained["runs"] / "inverse_sine", models, plots=False)
    assert list(models.iterdir()) == []


def test_user_table_trains_and_exports(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, 400)
    rows = "\n".join(f"{u},{u * u + 0.01 * v},{v}" for u, v in zip(a, rng.normal(size=400), strict=True))
    (tmp_path / "sq.csv").write_text("u,y,noise\n" + rows + "\n")
    runs, models = tmp_path / "runs", tmp_path / "models"
    assert (
        train.main(
            [
                "--data",
                str(tmp_path / "sq.csv"),
                "--inputs",
                "y",
                "--targets",
                "u",
                "--name",
                "square_root",
                "--runs",
                str(runs),
                "--components",
                "2",
                *SMALL,
            ]
        )
        == 0
    )
    assert export.main(["--name", "square_root", "--runs", str(runs), "--models", str(models)]) == 0
    meta = parse_metadata(
        {p.key: p.value for p in onnx.load(str(models / "square_root" / "1" / "model.onnx")).metadata_props}[
            METADATA_KEY
        ]
    )
    assert meta.task == "table" and meta.input_names == ("y",) and meta.output_names == ("u",)
    plots = runs / "square_root" / "plots"  # the generic plots, and the report links them
    for name in ("table_samples.png", "table_weights.png", "calibration.png"):
        assert (plots / name).stat().st_size > 10_000, name
    assert "table_samples.png" in (runs / "square_root" / "report.md").read_text()


def run_cli(*args: str, cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["mdn_train.train", "--dataset", "nope"], "unknown dataset 'nope'"),
        (["mdn_train.train", "--data", "missing.csv", "--inputs", "a", "--targets", "b"], "does not exist"),
        (["mdn_train.train", "--data", "d.csv", "--inputs", "a", "--targets", "zz"], "no column(s) zz"),
        (["mdn_train.train", "--data", "d.csv", "--inputs", "a", "--targets", "b"], "'x' is not a number"),
        (["mdn_train.train", "--data", "empty.csv", "--inputs", "a", "--targets", "b"], "is empty"),
        (["mdn_train.train", "--dataset", "inverse_sine", "--components", "0"], "components must be >= 1"),
        (["mdn_train.train", "--dataset", "inverse_sine", "--hidden", "0"], "hidden widths must be >= 1"),
        (["mdn_train.export", "--all"], "no trained runs"),
        (["mdn_train.export", "--name", "ghost"], "no checkpoint"),
    ],
)
def test_cli_errors_are_clear_and_write_nothing(tmp_path, monkeypatch, capsys, args, message):
    """In this process (an unexpected exception would fail the test); the console script is below."""
    (tmp_path / "d.csv").write_text("a,b\n1,2\n3,x\n")
    (tmp_path / "empty.csv").write_text("")
    monkeypatch.chdir(tmp_path)
    try:
        code = importlib.import_module(args[0]).main(args[1:])
    except SystemExit as exc:
        code = exc.code
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    assert message in stderr
    assert not (tmp_path / "models").exists() and not (tmp_path / "runs").exists()


def test_the_console_script_reports_an_error_without_a_traceback(tmp_path):
    result = run_cli("mdn_train.train", "--dataset", "nope", cwd=tmp_path)
    assert result.returncode == 2 and "unknown dataset 'nope'" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()


def test_arm_reports_carry_the_served_ik_path(trained):
    ik = json.loads((trained["runs"] / "two_link_arm" / "report.json").read_text())["metrics"]["ik"]
    assert ik["fk_error_after_refinement"]["max"] <= 1e-6 and ik["joint_limit_violations"] == 0
    assert ik["fk_error_before_refinement"]["median"] > ik["fk_error_after_refinement"]["median"]
    assert 0 <= ik["branch_coverage"] <= 1 and ik["solutions_per_second_batch_1024"] > 0


def test_three_link_arm_trains_exports_and_reports_its_solution_spread(tmp_path):
    runs, models = tmp_path / "runs", tmp_path / "models"
    assert train.main(["--dataset", "three_link_arm", "--num-samples", "3000", "--runs", str(runs), *SMALL]) == 0
    assert export.main(["--name", "three_link_arm", "--runs", str(runs), "--models", str(models)]) == 0
    meta = parse_metadata(
        {p.key: p.value for p in onnx.load(str(models / "three_link_arm" / "1" / "model.onnx")).metadata_props}[
            METADATA_KEY
        ]
    )
    assert meta.output_names == ("theta1", "theta2", "theta3")
    assert meta.chain is not None and meta.chain.num_joints == 3 and meta.chain.reach == pytest.approx(1.0)
    report = json.loads((runs / "three_link_arm" / "report.json").read_text())
    ik = report["metrics"]["ik"]
    assert "joint_spread_rad" in ik and ik["joint_limit_violations"] == 0
    assert ik["fk_error_after_refinement"]["max"] <= 1e-6
    assert set(report["plots"]) == {"arm_workspace_errors.png", "arm_ik_solutions.png", "calibration.png"}


def test_the_cosine_schedule_runs_one_cycle_and_the_baseline_cap_holds():
    """--schedule cosine: the learning rate warms up, then decays towards a thousandth of the peak by the
    last epoch; --baseline-epochs caps the least-squares baseline only."""
    from mdn_train.config import default_config, with_overrides
    from mdn_train.data import make_dataset, split
    from mdn_train.model import MDN
    from mdn_train.train import _fit, fit_models

    run = with_overrides(default_config("inverse_sine"), num_samples=400, epochs=6, batch_size=64,
                         learning_rate=1e-2, schedule="cosine", baseline_epochs=2, patience=100)  # fmt: skip
    splits = split(make_dataset(run.data), run.data)
    model = MDN(1, 1, run.model)
    result = _fit(model, splits, run, "cosine", progress=False)
    assert result.epochs_run == 6
    assert result.final_lr < 1e-2 / 100  # near the end of the cycle: towards a thousandth of the peak
    fitted = fit_models(run, splits, progress=False)
    assert fitted["summary"]["mdn_epochs_run"] == 6 and len(fitted["history"]["baseline"]) == 2
    with pytest.raises(Exception, match="schedule must be one of plateau, cosine"):
        with_overrides(run, schedule="step").validate()
