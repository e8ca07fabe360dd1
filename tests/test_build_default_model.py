"""scripts/build_default_model.py, the recipe behind the embedded model, end to end on a tiny corpus.

The embedded model (v23) is built with ``--final-fit``: train with dev choosing, refit on train +
dev, export the dev-chosen seed's refit. This runs that path for real (training, refit, fp32
export with its parity check on test audio, int8 export, test-split evaluation) with a small
network, without ``--install`` (which would overwrite the package's model).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from cusemo_batch.model import Model

REPO = Path(__file__).resolve().parents[1]


def test_final_fit_build_trains_refits_and_exports_the_chosen_seed(tiny_corpus, tiny_train_config, tmp_path):
    cfg = tiny_train_config(epochs=2, seeds=(5, 6))
    work = tmp_path / "work"
    shutil.copytree(tiny_corpus, work / "corpus")  # the script bootstraps RAVDESS only without one
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "build_default_model.py"), "--final-fit",
                        "--work", str(work), "--config", str(cfg), "--jobs", "1", "--version", "0.0-test"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    source = json.loads((work / "run" / "summary.json").read_text())
    refit = json.loads((work / "refit" / "summary.json").read_text())
    assert refit["refit_from"]["source"] == str(work / "run")
    assert refit["best_seed"] == source["best_seed"]  # the seed dev chose in the source run ships
    record = json.loads((work / "default.json").read_text())
    assert record["refit_from"] == refit["refit_from"] and record["best_seed"] == source["best_seed"]
    # stability is the source run's: a refit has no dev curves
    stab = record["stability"]
    assert stab["stable_seeds"] == sum(not stab[s]["mean"]["unlearned"] for s in ("5", "6"))
    assert set(record["onnx_test_ccc"]) == {"fp32", "int8"}

    fp32, int8 = Model(work / "cusemo-default.onnx", device="cpu"), Model(work / "int8" / "cusemo-default.onnx", device="cpu")
    assert fp32.version == int8.version == f"0.0-test-seed{source['best_seed']}"
    assert fp32.metadata["checkpoint_sha256"] == int8.metadata["checkpoint_sha256"]
    assert int8.metadata["refit_from"]["source"] == str(work / "run")
    # the default int8 scheme: dynamic LSTM/MatMul, per-channel weights, convolutions left fp32
    q = int8.metadata["quantization"]
    assert q["dynamic"] == ["MatMul", "LSTM"] and q["row_scaled_convs"] == [] and q["weights"] == "per_channel"
