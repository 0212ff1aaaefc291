import numpy as np
import pytest
from mdn_train.config import DataConfig, RunConfig, default_config
from mdn_train.data import inverse_sine_forward, load_table, make_dataset, split
from mdn_train.errors import TrainerError


def test_inverse_sine_follows_bishops_recipe_and_is_seeded():
    config = DataConfig(dataset="inverse_sine", num_samples=5000, seed=3)
    data = make_dataset(config)
    assert data.inputs.shape == (5000, 1) and data.targets.shape == (5000, 1)
    assert data.input_names == ("t",) and data.target_names == ("x",)
    x, t = data.targets[:, 0], data.inputs[:, 0]
    assert x.min() >= 0 and x.max() <= 1
    noise = t - inverse_sine_forward(x)
    assert np.abs(noise).max() <= 0.1 + 1e-6 and np.abs(noise).max() > 0.09
    np.testing.assert_array_equal(make_dataset(config).inputs, data.inputs)


def test_two_link_arm_targets_are_forward_kinematics_of_angles_within_limits():
    data = make_dataset(default_config("two_link_arm").data)
    assert data.input_names == ("ee_x", "ee_y") and data.target_names == ("theta1", "theta2")
    assert data.arm is not None and data.arm.link_lengths == (0.8, 0.2)
    assert data.arm.within_limits(data.targets.astype(np.float64)).all()
    np.testing.assert_allclose(data.arm.forward(data.targets.astype(np.float64)), data.inputs, atol=1e-6)


def test_splits_are_disjoint_and_cover_the_data():
    config = DataConfig(dataset="inverse_sine", num_samples=1000)
    parts = split(make_dataset(config), config)
    assert (len(parts.train.inputs), len(parts.val.inputs), len(parts.test.inputs)) == (800, 100, 100)
    rows = np.concatenate([parts.train.inputs, parts.val.inputs, parts.test.inputs])[:, 0]
    assert len(np.unique(rows)) == 1000


def test_csv_and_npz_tables_load_named_columns(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("a,b,c\n1,2,3\n4,5,6\n\n7,8,9\n")
    data = load_table(csv, ("c", "a"), ("b",))
    np.testing.assert_array_equal(data.inputs, [[3, 1], [6, 4], [9, 7]])
    np.testing.assert_array_equal(data.targets, [[2], [5], [8]])
    npz = tmp_path / "d.npz"
    np.savez(npz, a=np.arange(4.0), b=np.arange(4) * 2)
    data = load_table(npz, ("a",), ("b",))
    assert data.inputs.shape == (4, 1) and data.targets[-1, 0] == 6


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("a,b\n", "no rows"),
        ("a,x\n1,2\n", "no column(s) b"),
        ("a,b\n1,oops\n", "line 2, column 'b': 'oops' is not a number"),
        ("a,b\n1,nan\n2,3\n", "NaN or infinite values (first at line 2)"),
        ("a,b\n1,2\n\n\n3,inf\n", "1 NaN or infinite values (first at line 5)"),  # the file's line, blanks too
        ("a,b\n1,2\n3\n", "line 3, column 'b': '' is not a number"),
    ],
)
def test_bad_csv_files_are_explained(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(TrainerError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_table(path, ("a",), ("b",))


def test_bad_npz_and_paths_are_explained(tmp_path):
    npz = tmp_path / "bad.npz"
    np.savez(npz, a=np.zeros((3, 2)), b=np.array(["x", "y", "z"]))
    with pytest.raises(TrainerError, match="must be 1-D"):
        load_table(npz, ("a",), ("b",))
    np.savez(npz, a=np.zeros(3), b=np.array(["x", "y", "z"]))
    with pytest.raises(TrainerError, match="not numeric"):
        load_table(npz, ("a",), ("b",))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(TrainerError, match="cannot read"):
        load_table(tmp_path / "junk.npz", ("a",), ("b",))
    with pytest.raises(TrainerError, match="does not exist"):
        load_table(tmp_path / "missing.csv", ("a",), ("b",))
    (tmp_path / "d.txt").write_text("a,b\n")
    with pytest.raises(TrainerError, match=r"\.csv or \.npz"):
        load_table(tmp_path / "d.txt", ("a",), ("b",))
    with pytest.raises(TrainerError, match="both input and target"):
        load_table(tmp_path / "d.txt", ("a",), ("a",))


def test_impossible_configs_are_explained():
    base = default_config("inverse_sine").to_dict()
    base["model"]["components"] = 0
    base["train"]["learning_rate"] = -1.0
    with pytest.raises(TrainerError, match=r"components must be >= 1.*learning_rate"):
        RunConfig.from_dict(base).validate()
    with pytest.raises(TrainerError, match="unknown dataset"):
        default_config("nope")
    with pytest.raises(TrainerError, match="unknown ModelConfig keys: width"):
        RunConfig.from_dict({"name": "a", "model": {"width": 3}})
