"""CLI contract: --help on every command, one-line usage errors with exit code 2, no tracebacks."""

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from cusemo_batch.cli import main


def all_commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        yield prefix + (name,)
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, prefix + (name,))


@pytest.mark.parametrize("path", [()] + list(all_commands(main)))
def test_help_everywhere(path):
    r = CliRunner().invoke(main, [*path, "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage:" in r.output


def test_usage_errors_exit_2_without_traceback(tmp_path):
    runner = CliRunner()
    for args in (["train"], ["train", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                 ["corpus", "from-categorical", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "c")],
                 ["no-such-command"]):
        r = runner.invoke(main, args)
        assert r.exit_code == 2, (args, r.output)
        assert "Traceback" not in r.output


def test_console_script_runs_without_torch_import():
    """`cusemo-batch --help` must not import torch (scoring machines do not have it)."""
    code = "import sys; from cusemo_batch.cli import main; assert 'torch' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_cli_start_needs_no_training_package_and_corpus_defaults_match_bootstrap_config():
    """The CLI loads without cusemo_batch.training (it lives in training/, mapped at install time),
    and `corpus from-categorical` shows BootstrapConfig's defaults, written out in the CLI."""
    code = "import sys; from cusemo_batch.cli import main; assert 'cusemo_batch.training' not in sys.modules"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    from cusemo_batch.training.categorical import BootstrapConfig

    cmd = main.commands["corpus"].commands["from-categorical"]
    given = {p.name: p.default for p in cmd.params if isinstance(p, click.Option)}
    want = BootstrapConfig()
    for name in ("seed", "min_call_s", "max_call_s", "max_calls_per_speaker"):
        assert given[name] == getattr(want, name), name


def test_user_error_keeps_bracketed_text(tmp_path):
    """Config errors name sections like [train]; the rich console must not eat them as markup."""
    (tmp_path / "c").mkdir()
    r = CliRunner().invoke(main, ["train", str(tmp_path / "c"), "--out", str(tmp_path / "o"), "--batch-size", "0"])
    assert r.exit_code == 2
    assert "[train] batch_size" in r.output
