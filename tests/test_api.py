"""The public API at the top of the package, its docstring examples, and every README/docs snippet."""

import doctest
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import cusemo_batch as cb

REPO = Path(__file__).resolve().parents[1]


def run_fresh(*lines: str) -> None:
    """Run the lines in a fresh interpreter (what is imported depends on nothing this process did)."""
    r = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_import_is_light_and_names_resolve():
    run_fresh("import sys, cusemo_batch as cb",
              "heavy = [m for m in ('onnxruntime', 'polars', 'numpy', 'torch') if m in sys.modules]",
              "assert not heavy, heavy",
              "assert cb.Scorer.__name__ == 'Scorer' and cb.ScoreOptions and cb.DiscoveryOptions and cb.report.build",
              "assert 'torch' not in sys.modules")
    with pytest.raises(AttributeError):
        cb.no_such_name  # noqa: B018


def test_options_are_keyword_only_and_flat():
    with pytest.raises(TypeError):
        cb.score_folder("examples/calls", None)  # model must be a keyword
    opts = cb.ScoreOptions.make(roles={"SPEAKER_00": "agent"}, speakers=("client",), rate_s=1.0, min_speech_s=2.0)
    assert opts.discovery.roles == {"SPEAKER_00": "agent"} and opts.discovery.speakers == ("client",)
    assert opts.rate_s == 1.0 and opts.min_speech_s == 2.0
    with pytest.raises(TypeError, match="unknown option"):
        cb.ScoreOptions.make(rolse={})
    with pytest.raises(TypeError, match="either"):
        cb.score_folder("examples/calls", options=opts, rate_s=2.0)


def test_docstring_examples(monkeypatch):
    """Every public name (``cb.__all__``; ``__version__`` is a string) has an example, and it runs."""
    monkeypatch.chdir(REPO)
    finder, runner = doctest.DocTestFinder(recurse=False), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    without = []
    for name in cb.__all__:
        if name == "__version__":
            continue
        tests = [t for t in finder.find(getattr(cb, name), name, globs={}) if t.examples]
        if not tests:
            without.append(name)
        for t in tests:
            runner.run(t)
    assert not without, f"public names without a docstring example: {without}"
    assert runner.failures == 0 and runner.tries >= 20


def test_score_files_matches_score_folder_for_the_same_call(tmp_path):
    single = tmp_path / "calls"
    single.mkdir()
    (single / "negative_end.flac").write_bytes((REPO / "examples" / "calls" / "negative_end.flac").read_bytes())
    a = cb.score_files([single / "negative_end.flac", tmp_path / "missing.wav"], device="cpu")
    b = cb.score_folder(single, device="cpu")
    assert a.timeseries.equals(b.timeseries) and a.calls.equals(b.calls)
    assert a.errors["error"].to_list() == ["MissingFile"]


def test_score_nightly_takes_a_call_list_and_an_engine(tmp_path):
    from cusemo_batch.engine import LocalEngine

    listing = tmp_path / "list.csv"
    listing.write_text(f"call_id,files,queue\nneg,{REPO / 'examples' / 'calls' / 'negative_end.flac'},support\n")
    s = cb.score_nightly(None, tmp_path / "out", call_list=listing, engine=LocalEngine(), device="cpu")
    assert (s.scored, s.failed, s.exit_code) == (1, 0, 0)
    calls = pl.read_parquet(tmp_path / "out" / "calls" / "**" / "*.parquet")
    assert set(calls["metadata"]) == {'{"queue": "support"}'}
    assert cb.score_files([REPO / "examples" / "calls" / "negative_end.flac"]).calls["metadata"].to_list() == ["{}"]


DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _snippets(kind: str) -> list[tuple[str, str]]:
    """(file, code) of every Python block (``kind="python"``) or ``duckdb -c "..."`` query in the docs."""
    pattern = r"```python\n(.*?)```" if kind == "python" else r'duckdb -c "(.*?)"'
    return [(p.name, m) for p in DOCS for m in re.findall(pattern, p.read_text(), flags=re.S)]


def test_every_docs_snippet_runs(tmp_path):
    """README and docs/*.md: every Python block and every DuckDB query, in a fresh folder holding the
    demo calls and the store the README's first command writes (``OUT`` in docs = that store)."""
    duckdb = pytest.importorskip("duckdb")
    (tmp_path / "examples").symlink_to(REPO / "examples")
    r = subprocess.run([sys.executable, "-m", "cusemo_batch", "score", "examples/calls", "--out", "out/emotion",
                        "--roles", "SPEAKER_00=agent,SPEAKER_01=client"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    python = _snippets("python")
    assert {name for name, _ in python} >= {"README.md", "scoring.md"} and len(python) >= 3
    for name, code in python:
        r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{name} snippet:\n{code}\n{r.stderr[-2000:]}"
    queries = _snippets("duckdb")
    assert len(queries) >= 5
    con = duckdb.connect()
    for name, sql in queries:
        sql = sql.replace("'OUT/", f"'{tmp_path}/out/emotion/").replace("'out/emotion/", f"'{tmp_path}/out/emotion/")
        try:
            con.sql(sql).fetchall()
        except duckdb.Error as e:
            pytest.fail(f"{name} query failed: {sql}\n{e}")


def test_training_config_and_data_identity_do_not_import_torch():
    """The torch wall: configs, corpus identity and splits are readable on a scoring machine."""
    run_fresh("import sys",
              "from cusemo_batch.training.config import load_config",
              "from cusemo_batch.training.data import data_hash, group_column, split_groups",
              "cfg = load_config('ravdess_default')",
              "assert cfg.model.hop == 250",
              "assert 'torch' not in sys.modules, 'torch imported'")


def test_documentation_links_resolve():
    """README and docs/ link each other by relative paths: every one points at a file that exists."""
    pages = [REPO / "README.md", REPO / "MODEL_CARD.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"^(https?:|mailto:|#)", target):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.exists():
                broken.append(f"{page.name}: {target}")
    assert not broken, broken
