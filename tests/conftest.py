"""Shared fixtures. Real speech comes from ../shared/data/ravdess (RAVDESS, CC BY-NC-SA 4.0).

Set CUSEMO_DATA to point elsewhere. Tests that need real speech skip when it is absent on a
developer machine, but fail under CI (CI=true), where a silent skip would hide lost coverage.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _data_root() -> Path:
    env = os.environ.get("CUSEMO_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def ravdess_dir() -> Path:
    d = _data_root() / "ravdess"
    if not (d / "manifest.csv").is_file():
        msg = f"real speech not found at {d} (set CUSEMO_DATA)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return d


@pytest.fixture(scope="session")
def ravdess_manifest(ravdess_dir: Path) -> Path:
    return ravdess_dir / "manifest.csv"


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory, ravdess_manifest: Path) -> Path:
    """9 pseudo-calls (3 speakers x 3 calls, 15-25 s) built from real RAVDESS speech."""
    from cusemo_batch.training.categorical import BootstrapConfig, build_corpus

    out = tmp_path_factory.mktemp("tiny_corpus")
    cfg = BootstrapConfig(seed=3, min_call_s=15, max_call_s=25, max_calls_per_speaker=3,
                          speakers=("ravdess_01", "ravdess_02", "ravdess_03"))
    build_corpus(ravdess_manifest, out, cfg)
    return out


@pytest.fixture
def tiny_train_config(tmp_path):
    """Write a TOML config for a small CRNN trained briefly on ``tiny_corpus``; returns its path."""

    def make(epochs: int, seeds: tuple[int, ...]) -> Path:
        path = tmp_path / f"tiny_{epochs}_{'_'.join(map(str, seeds))}.toml"
        path.write_text(f"""
[model]
conv_channels = [8, 16, 16]
lstm_hidden = 32
mlp_sizes = [32, 16]
[data]
segment_s = 20
split = [0.34, 0.33, 0.33]
[train]
epochs = {epochs}
seeds = [{", ".join(map(str, seeds))}]
lr = 1e-3
""")
        return path

    return make


@pytest.fixture(scope="session")
def plumbing_onnx(tmp_path_factory) -> Path:
    """A small, *untrained* CRNN exported to ONNX: for testing the scoring plumbing (formats,
    timestamps, tables, crash safety), never for judging emotions."""
    import torch

    from cusemo_batch.export.onnx import export_model
    from cusemo_batch.training.model import CRNN, ModelConfig

    torch.manual_seed(0)
    model = CRNN(ModelConfig(conv_channels=(8, 16, 16), lstm_hidden=32, mlp_sizes=(32, 16))).eval()
    out = tmp_path_factory.mktemp("plumbing_model") / "plumbing.onnx"
    export_model(model, {"name": "plumbing", "version": "0", "normalisation": "none", "label_rate_ms": 500},
                 out, check=False)
    return out
