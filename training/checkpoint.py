"""Checkpoint file format: one ``.pt`` holding the weights and a JSON description of the model.

The file is a plain dict ``{"format", "meta_json", "state_dict"}`` of strings and tensors so it
loads with ``torch.load(..., weights_only=True)`` -- no pickled code is ever executed. ``meta``
carries everything export and scoring need: model sizes, sample rate, label rate, input
normalisation, training data hash, dev/test CCC.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from cusemo_batch.files import atomic_path, sha256_file

from .model import CRNN, ModelConfig

FORMAT = "cusemo-crnn-checkpoint/1"


class CheckpointError(Exception):
    """A file is not a readable cusemo checkpoint (one-line message for the CLI)."""


def save_checkpoint(path: str | Path, model: CRNN, meta: dict[str, Any]) -> None:
    """Write atomically (temp file + rename) so a killed run never leaves a half checkpoint."""
    path = Path(path)
    meta = dict(meta)
    meta["model"] = model.config.to_dict()
    payload = {
        "format": FORMAT,
        "meta_json": json.dumps(meta, sort_keys=True),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> tuple[CRNN, dict[str, Any]]:
    """Load safely; raise :class:`CheckpointError` with a one-line reason on anything unexpected."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt/foreign files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({first[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a cusemo-batch checkpoint (expected format {FORMAT})")
    try:
        meta = json.loads(payload["meta_json"])
        model = CRNN(ModelConfig.from_dict(meta["model"]))
        model.load_state_dict(payload["state_dict"])
    except Exception as e:
        raise CheckpointError(f"{path}: checkpoint does not match its model config ({str(e).splitlines()[0][:200]})") from None
    model.eval()
    meta["checkpoint_sha256"] = sha256_file(path)
    return model, meta

