"""`mdn-client` against the real server."""

from __future__ import annotations

import json

import pytest
from mdn_serve.tools import client_cli as client


def run(capsys, server, *args: str) -> tuple[int, str, str]:
    code = client.main(["--target", server.target, *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_models_text_and_json(capsys, server):
    code, out, _ = run(capsys, server, "models")
    assert code == 0 and "two_link_arm  version 1 (of 1)  ee_x, ee_y -> theta1, theta2  K=3" in out
    code, out, _ = run(capsys, server, "--json", "models")
    assert {m["name"] for m in json.loads(out)} == {"two_link_arm", "inverse_sine"}


def test_modes_show_both_elbows(capsys, server):
    code, out, _ = run(capsys, server, "modes", "--model", "two_link_arm", "--input", "0.6,0.6")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("input ee_x=0.6 ee_y=0.6")
    modes = [line for line in lines if line.strip().startswith("mode ")]
    assert len(modes) >= 2 and all("theta1=" in m and "mass" in m for m in modes)
    signs = {m.split("theta2=")[1].split()[0].startswith("-") for m in modes}
    assert signs == {True, False}  # elbow up and elbow down


@pytest.mark.parametrize("encoding", [[], ["--values"]])
def test_json_sample_and_predict_from_csv(capsys, server, tmp_path, encoding):
    (tmp_path / "in.csv").write_text("ee_y,ee_x\n0.6,0.6\n0.2,0.9\n")
    code, out, _ = run(capsys, server, *encoding, "--json", "sample", "--model", "two_link_arm",
                       "--csv", str(tmp_path / "in.csv"), "-n", "4", "--seed", "3")  # fmt: skip
    result = json.loads(out)
    assert code == 0 and result["model"] == "two_link_arm" and result["version"] == "1"
    assert len(result["samples"]) == 2 and len(result["samples"][0]) == 4 and len(result["samples"][0][0]) == 2
    code, out, _ = run(capsys, server, *encoding, "--json", "predict", "--model", "inverse_sine", "--input", "0.5")
    assert code == 0 and abs(sum(json.loads(out)["weights"][0]) - 1) < 1e-5


def test_modes_json_pads_with_null(capsys, server):
    code, out, _ = run(capsys, server, "--json", "modes", "--model", "two_link_arm", "--input", "0.6,0.6",
                       "--input", "0.97,0.1")  # fmt: skip
    result = json.loads(out)
    assert code == 0 and len(result["modes"][0]) == max(result["num_modes"])
    for row, count in zip(result["modes"], result["num_modes"], strict=True):
        assert all(None not in mode for mode in row[:count])
        assert all(mode == [None, None] for mode in row[count:])


def test_server_errors_are_printed_not_raised(capsys, server):
    code, _, err = run(capsys, server, "predict", "--model", "nope", "--input", "1")
    assert code == 1 and err.startswith("mdn-client: error: NOT_FOUND: unknown model 'nope'")


def test_bad_local_input_is_explained(capsys, server, tmp_path):
    with pytest.raises(SystemExit, match="give --input ee_x,ee_y"):
        client.main(["--target", server.target, "modes", "--model", "two_link_arm"])
    (tmp_path / "in.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SystemExit, match="needs columns ee_x, ee_y; missing ee_x, ee_y"):
        client.main(["--target", server.target, "modes", "--model", "two_link_arm", "--csv", str(tmp_path / "in.csv")])
    with pytest.raises(SystemExit, match=r"--input row 2 has 3 values; each needs 2 \(ee_x, ee_y\)"):  # ragged rows
        client.main(["--target", server.target, "modes", "--model", "two_link_arm", "--input", "0.6,0.6",
                     "--input", "0.6,0.6,1"])  # fmt: skip
    with pytest.raises(SystemExit, match=r"--input row 1 \('0.6,x'\)"):
        client.main(["--target", server.target, "predict", "--model", "two_link_arm", "--input", "0.6,x"])


def test_json_goes_before_or_after_the_command_and_ik_takes_input_rows(capsys, server):
    before = run(capsys, server, "--json", "ik", "--model", "two_link_arm", "0.6", "0.6")
    after = run(capsys, server, "ik", "--model", "two_link_arm", "--input", "0.6,0.6", "--json")
    assert before[0] == after[0] == 0 and json.loads(before[1]) == json.loads(after[1])
    code, out, _ = run(capsys, server, "modes", "--model", "two_link_arm", "--input", "0.6,0.6", "--json")
    assert code == 0 and json.loads(out)["num_modes"][0] >= 1


def test_ik_prints_ranked_exact_solutions_and_reasons(capsys, server):
    code, out, _ = run(capsys, server, "ik", "--model", "two_link_arm", "0.6", "0.6", "2", "0")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("target ee_x=0.6 ee_y=0.6:") and "solution(s)" in lines[0]
    ranked = [line for line in lines if line.strip().startswith(("1.", "2."))]
    assert len(ranked) >= 2 and all("within limits" in line and "position error" in line for line in ranked)
    assert any(line.strip().startswith("unreachable: the target is 2 from the base") for line in lines)
    code, out, _ = run(capsys, server, "--json", "ik", "--model", "two_link_arm", "0.6", "0.6", "--max-solutions", "1")
    result = json.loads(out)
    assert result["num_solutions"] == [1] and result["status"] == ["ok"] and len(result["solutions"][0]) == 1


def test_ik_needs_pairs(capsys, server):
    with pytest.raises(SystemExit, match="takes planar targets of 2 numbers each"):
        client.main(["--target", server.target, "ik", "--model", "two_link_arm", "0.6"])


def test_piping_into_head_is_not_an_error(server):
    import subprocess
    import sys

    command = (
        f"{sys.executable} -m mdn_serve.tools.client_cli --target {server.target} sample --model two_link_arm "
        "--input 0.6,0.6 -n 2000 | head -n 1"
    )
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Traceback" not in result.stderr and result.stdout.startswith("input")
