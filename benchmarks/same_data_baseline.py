"""eGEMAPS + ridge trained on *the same data as the CRNN* (issue 14's fair baseline).

``bench_transfer.py``'s first baseline is fitted on the clean TRAIN calls at their recorded levels.
The CRNN it is compared with never saw that audio: each epoch every training call went through a
random telephone line (``[augment]`` of the run's recipe) and then the model's input normalisation
(``normalisation``, e.g. ``speech_rms``: one gain to -26 dBFS active-speech RMS). A baseline fitted
on clean audio at RAVDESS's levels keeps what the CRNN was made to give up -- loudness, which is a
label proxy there -- so on clean RAVDESS it has an advantage the product may not take, and on
other lines and levels a handicap the CRNN was trained out of. This baseline gets what the CRNN
got:

* **TRAIN**: ``lines`` copies of every training call, each through one random line drawn with the
  run's own :class:`AugmentConfig` and :func:`cusemo_batch.training.augment.augment` (the function
  the trainer calls), seeded per (``seed``, call, copy) so every run draws the same lines; then the
  model's normalisation. Without ``[augment] enabled`` in the run: one clean copy, normalised.
* **DEV** (ridge alpha and feature delay, as the first baseline): clean calls, normalised -- what
  the trainer's dev evaluation sees.
* **Every test condition and BAVED file**: the condition's audio, then the model's normalisation,
  as the scorer does before the CRNN.

Features, ridge and choice on dev are :mod:`bench_accuracy`'s (88 eGeMAPS v02 functionals over 4 s
windows, cached by samples). Nothing here selects a CRNN.
"""

from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

import accuracy_lib as lib
import bench_accuracy as acc

from cusemo_batch.audio import normalise
from cusemo_batch.training.augment import AugmentConfig, augment
from cusemo_batch.training.config import from_dict


@dataclass
class SameDataBaseline:
    """The fitted ridge per dimension and the input path every audio goes through first."""

    fitted: dict
    info: dict
    normalisation: str
    sample_rate: int

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """Audio as this baseline (and the CRNN) sees it: the model's input normalisation."""
        return normalise(x, self.normalisation, self.sample_rate)


def run_augment_config(run_cfg: dict) -> AugmentConfig | None:
    """The ``[augment]`` the run trained with, or None when it trained on clean audio."""
    if not run_cfg.get("config"):
        return None
    aug = from_dict(run_cfg["config"]).augment
    return aug if aug.enabled else None


def line_seed(seed: int, call_id: str, copy_index: int) -> list[int]:
    """The rng seed of one call's copy: fixed per (seed, call, copy), independent of call order."""
    return [seed, zlib.crc32(call_id.encode()), copy_index]


def training_copies(calls: list, aug: AugmentConfig | None, lines: int, seed: int, sample_rate: int,
                    prepare: Callable[[np.ndarray], np.ndarray]) -> list[tuple[object, np.ndarray]]:
    """(call record, audio) per training copy: ``lines`` random lines of each call, or one clean copy.

    Each copy is a shallow copy of the call's record under the id ``CALL#lineK`` (its gold and bins
    are the call's), so the ridge fitting code sees ordinary calls.
    """
    out = []
    for c in calls:
        for k in range(lines if aug is not None else 1):
            x = c.x if aug is None else augment(c.x, sample_rate, aug, np.random.default_rng(line_seed(seed, c.call_id, k)))
            rec = copy.copy(c)
            rec.call_id = f"{c.call_id}#line{k}"
            out.append((rec, prepare(x)))
    return out


def fit(args, setup, normalisation: str, sample_rate: int, bin_s: float, log: Callable[[str], None]) -> SameDataBaseline:
    """Extract (cached) and fit: TRAIN through the run's random lines, DEV clean; both normalised."""
    base = SameDataBaseline({}, {}, normalisation, sample_rate)
    aug = run_augment_config(setup.run_cfg)
    cache = Path(args.cache) if args.cache else None
    train = training_copies(setup.by["train"], aug, args.same_data_lines, args.channel_seed, sample_rate, base.prepare)
    dev = []
    for c in setup.by["dev"]:
        rec = copy.copy(c)
        rec.call_id = f"{c.call_id}#norm"
        dev.append((rec, base.prepare(c.x)))
    log(f"eGEMAPS (same data): {len(train)} training copies "
        f"({'random lines of the run' if aug else 'clean: the run trained without [augment]'}), "
        f"{len(dev)} dev calls, normalisation {normalisation} …")
    windows = {}
    for i, (rec, x) in enumerate([*train, *dev], 1):
        windows[rec.call_id] = lib.cached_windows_of_array(rec.call_id, x, sample_rate, args.window_s, bin_s, cache)
        if i % 50 == 0:
            log(f"  eGEMAPS (same data) {i}/{len(train) + len(dev)}")
    base.fitted, info = acc.fit_egemaps_ridge(args, [r for r, _ in [*train, *dev]], windows, bin_s)
    base.info = {**{k: v for k, v in info.items() if k != "grid"},
                 "training_audio": (f"{args.same_data_lines} random line(s) per TRAIN call, the run's [augment] "
                                    f"(seed [{args.channel_seed}, crc32(call_id), copy])" if aug else
                                    "clean TRAIN calls (the run trained without [augment])")
                 + f", then normalisation {normalisation}; DEV clean, normalised",
                 "augment": None if aug is None else {k: getattr(aug, k) for k in aug.__dataclass_fields__}}
    return base
