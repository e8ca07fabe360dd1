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
  model's normalisation. With ``[augment] speeds`` each copy is also played at one of the run's
  speeds (drawn after the line, from the copy's rng), its gold stretched as the trainer stretches a
  segment's. Without ``[augment] enabled`` in the run: one clean copy, normalised.
* **DEV** (ridge alpha and feature delay, as the first baseline): clean calls, normalised -- what
  the trainer's dev evaluation sees.
* **Every test condition and BAVED file**: the condition's audio, then the model's normalisation,
  as the scorer does before the CRNN.

Features, ridge and choice on dev are :mod:`bench_accuracy`'s (88 eGeMAPS v02 functionals over 4 s
windows, cached by samples). Nothing here selects a CRNN.
"""

from __future__ import annotations

import copy
import functools
import itertools
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

import accuracy_lib as lib
import bench_accuracy as acc

from cusemo_batch.audio import normalise
from cusemo_batch.training.augment import AugmentConfig, augment, speed_perturb
from cusemo_batch.training.data import speed_bins, stretch_labels
from cusemo_batch.training.config import from_dict


@dataclass
class SameDataBaseline:
    """The fitted ridge per dimension, and ``prepare``: the path every audio takes before it (the
    model's input normalisation, as for the CRNN)."""

    fitted: dict
    info: dict
    prepare: Callable[[np.ndarray], np.ndarray]


def run_augment_config(run_cfg: dict) -> AugmentConfig | None:
    """The ``[augment]`` the run trained with, or None when it trained on clean audio."""
    if not run_cfg.get("config"):
        return None
    aug = from_dict(run_cfg["config"]).augment
    return aug if aug.enabled else None


def line_seed(seed: int, call_id: str, copy_index: int) -> list[int]:
    """The rng seed of one call's copy: fixed per (seed, call, copy), independent of call order."""
    return [seed, zlib.crc32(call_id.encode()), copy_index]


def _renamed(call, call_id: str, speed: float = 1.0):
    """A shallow copy of a call record under another id, so the ridge fitting code sees each copy as
    an ordinary call; its gold and bins are the call's, stretched when the copy is played at
    ``speed`` (:func:`cusemo_batch.training.data.stretch_labels`, as the trainer does)."""
    rec = copy.copy(call)
    rec.call_id = call_id
    if speed != 1.0:
        rec.n = speed_bins(call.n, speed)
        rec.gold = {d: stretch_labels(g, 0, rec.n, speed) for d, g in call.gold.items()}
    return rec


def training_copies(calls: list, aug: AugmentConfig | None, lines: int, seed: int, sample_rate: int,
                    prepare: Callable[[np.ndarray], np.ndarray]) -> Iterator[tuple[object, np.ndarray]]:
    """(call record ``CALL#lineK``, audio) per training copy: ``lines`` random lines of each call, or
    one clean copy. Yielded one at a time: the copies of a corpus do not all fit in memory at once."""
    for c in calls:
        for k in range(lines if aug is not None else 1):
            if aug is None:
                yield _renamed(c, f"{c.call_id}#line{k}"), prepare(c.x)
                continue
            rng = np.random.default_rng(line_seed(seed, c.call_id, k))
            x = augment(c.x, sample_rate, aug, rng)
            speed = float(aug.speeds[int(rng.integers(len(aug.speeds)))]) if aug.speeds else 1.0
            yield _renamed(c, f"{c.call_id}#line{k}", speed), prepare(speed_perturb(x, speed))


def fit(args, setup, normalisation: str, sample_rate: int, bin_s: float, log: Callable[[str], None],
        final_fit: bool = False) -> SameDataBaseline:
    """Extract (cached) and fit: TRAIN through the run's random lines, DEV clean; both normalised.

    ``final_fit``: once (alpha, delay) is chosen on DEV, fit on the random lines of TRAIN *and*
    DEV calls -- what a CRNN refitted on train + dev (``train --refit-from``) learnt from.
    """
    prepare = functools.partial(normalise, method=normalisation, sample_rate=sample_rate)
    aug = run_augment_config(setup.run_cfg)
    cache = Path(args.cache) if args.cache else None
    fit_calls = setup.by["train"] + (setup.by["dev"] if final_fit else [])
    n_train = len(fit_calls) * (args.same_data_lines if aug else 1)
    log(f"eGEMAPS (same data): {n_train} training copies "
        f"({'random lines of the run' if aug else 'clean: the run trained without [augment]'}), "
        f"{len(setup.by['dev'])} dev calls, normalisation {normalisation} …")
    dev = ((_renamed(c, f"{c.call_id}#norm"), prepare(c.x)) for c in setup.by["dev"])
    copies, clean_dev, windows = [], [], {}
    for i, (rec, x) in enumerate(itertools.chain(
            training_copies(fit_calls, aug, args.same_data_lines, args.channel_seed, sample_rate, prepare),
            dev), 1):
        (copies if i <= n_train else clean_dev).append(rec)
        windows[rec.call_id] = lib.cached_windows_of_array(rec.call_id, x, sample_rate, args.window_s, bin_s, cache)
        if i % 50 == 0:
            log(f"  eGEMAPS (same data) {i}/{n_train + len(setup.by['dev'])}")
    # chosen on TRAIN copies -> clean DEV; a final fit then learns from every copy, DEV calls' too
    choose = [r for r in copies if r.split == "train"] + clean_dev
    fitted, info = acc.fit_egemaps_ridge(args, choose, windows, bin_s, copies if final_fit else None)
    info = {**{k: v for k, v in info.items() if k != "grid"},
            "training_audio": (f"{args.same_data_lines} random line(s) per {'TRAIN + DEV' if final_fit else 'TRAIN'} "
                               "call, the run's [augment]"
                               f"{f' with speeds {list(aug.speeds)}' if aug and aug.speeds else ''} "
                               f"(seed [{args.channel_seed}, crc32(call_id), copy])" if aug else
                               f"clean {'TRAIN + DEV' if final_fit else 'TRAIN'} calls (the run trained without [augment])")
            + f", then normalisation {normalisation}; DEV clean, normalised",
            "augment": None if aug is None else {k: getattr(aug, k) for k in aug.__dataclass_fields__}}
    return SameDataBaseline(fitted, info, prepare)
