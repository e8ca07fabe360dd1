"""Copies of the demo calls (examples/calls) for tests that need a CALLS folder to change."""

import shutil
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "calls"


def copy_demo_calls(dest: Path, names=("negative_end", "steady"), csv: bool = False) -> Path:
    """``dest`` holding the named demo calls (files or per-speaker folders), and calls.csv if ``csv``."""
    dest.mkdir(parents=True, exist_ok=True)
    for n in names:
        src = EXAMPLES / n
        if src.is_dir():
            shutil.copytree(src, dest / n)
        else:
            for f in EXAMPLES.glob(f"{n}.*"):
                shutil.copy(f, dest / f.name)
    if csv:
        shutil.copy(EXAMPLES / "calls.csv", dest / "calls.csv")
    return dest
