"""The generated code under server/mdn_serve/_proto is exactly what `make proto` makes from proto/."""

from pathlib import Path

from mdn_serve import protogen

REPO = Path(__file__).resolve().parents[1]


def test_generated_code_matches_the_proto_files(tmp_path):
    generated = protogen.generate(REPO / "proto", tmp_path)
    committed = REPO / "server"
    assert generated, "nothing was generated"
    fresh = {p.relative_to(tmp_path) for p in generated}
    present = {
        p.relative_to(committed)
        for p in (committed / protogen.PACKAGE_PATH).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert fresh == present, "run `make proto`: the set of generated files differs"
    stale = [str(rel) for rel in sorted(fresh) if (tmp_path / rel).read_bytes() != (committed / rel).read_bytes()]
    assert not stale, f"run `make proto`: these generated files are out of date: {stale}"
