"""Training configuration: one TOML file per experiment (``training/configs/*.toml``).

```toml
[model]   # CRNN sizes; defaults = the paper
[data]    # label rate, segment length, gold standard, split, auxiliary targets, augmentation
[train]   # optimiser, batch size, epochs, seeds, early stopping
[loss]    # alpha (interval context CCC) and beta (binary context BCE) weights of eq. 3
[augment] # channel augmentation (level, band-pass, codecs, noise, reverberation); off by default
```
Any key left out takes the default below (the paper's protocol). Unknown keys are errors: a typo in
a config must not silently train the wrong experiment.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cusemo_batch.audio import NORMALISATIONS
from cusemo_batch.tomlconfig import TomlConfigError, dataclass_from, read_toml

from .augment import AugmentConfig
from .labels import GOLD_METHODS
from .model_config import ModelConfig

PAPER_SEEDS = (42, 24, 12, 10, 100, 125)
ADVERSARY_MODES = ("reverse", "confusion")  # [loss] speaker_adversary_mode (training/adversary.py)
CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(Exception):
    """Invalid configuration (one-line message)."""


@dataclass(frozen=True)
class DataConfig:
    label_rate_ms: float = 500.0
    segment_s: float = 150.0
    gold: str = "mean"  # mean | median | single
    gold_annotator: str = ""
    normalisation: str = "none"  # none (the paper: raw waveform) | rms | speech_rms (cusemo_batch.level)
    split: tuple[float, float, float] = (130 / 215, 45 / 215, 40 / 215)  # the paper's 130/45/40 calls
    split_seed: int = 1
    group_by: str = "auto"  # auto = context column 'speaker' when present, else the call
    alpha_target: str = "empathy"  # interval context column (0..10) for the alpha task
    beta_target: str = "gender"  # binary context column for the beta task
    min_annotators: int = 2
    gain_db: float = 0.0  # random gain augmentation (+-dB per segment); 0 = off
    segment_jitter: bool = False  # move segment cut points by a random offset every epoch
    min_segment_s: float = 5.0  # with jitter: drop head pieces shorter than this
    max_calls: int = 0  # 0 = all; >0 keeps a seeded subset (quick runs, tests)


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1e-4
    batch_size: int = 5
    epochs: int = 100
    seeds: tuple[int, ...] = PAPER_SEEDS
    patience: int = 0  # early stopping on dev CCC; 0 = off (the paper trains all epochs)
    select_on: str = "mean"  # dev metric that picks the best checkpoint: valence | arousal | mean
    threads: int = 0  # torch intra-op threads; 0 = torch default
    grad_clip: float = 0.0  # max gradient norm; 0 = off (the paper does not clip)
    warmup_steps: int = 0  # linear learning-rate warm-up over this many optimiser steps; 0 = off
    # Collapse guard: when the dev predictions go constant (every ReLU of the MLP dead: the CCC loss
    # has no gradient left and the run never recovers), reload the best checkpoint so far and go on
    # with the learning rate times ``collapse_lr_factor``. 0 restarts = off (the paper's protocol).
    collapse_restarts: int = 0
    collapse_lr_factor: float = 0.5
    # Learning-rate multiplier for the LSTM alone (1 = the paper). Instrumented runs of the default
    # recipe showed the LSTM output saturating after a spike on its recurrent weights (then the loss
    # sits at 1.0); at 0.1 the first such collapse came at epoch 15 instead of 3, but it still came
    # and the run ended lower, so the default recipe does not use it (model card).
    lstm_lr_factor: float = 1.0
    # ReduceLROnPlateau on the dev selection metric: after ``plateau_patience`` epochs without a new
    # best, multiply the learning rate by ``plateau_factor`` (0 = off, a constant rate as the paper).
    plateau_factor: float = 0.0
    plateau_patience: int = 2
    # Exponential moving average of the weights (and batch-norm statistics), per optimiser step;
    # the averaged copy is what dev evaluation sees and what the checkpoint stores. 0 = off (the
    # paper). With batch 5 and small corpora a single step moves dev CCC by tenths (v4: seed 42
    # 0.45 -> 0.17 in one epoch); the average keeps what the last few hundred steps agree on.
    ema_decay: float = 0.0
    max_batches_per_epoch: int = 0  # 0 = all (tests use small numbers)


@dataclass(frozen=True)
class LossConfig:
    alpha: float = 0.0
    beta: float = 0.0
    # Weight of a mean-squared-error term added to each dimension's 1 - CCC (0 = the paper's loss).
    # CCC alone is blind to a prediction that is right in shape but offset or squashed on short
    # segments; a small MSE term anchors the scale (End2You and AVEC systems use CCC + MSE).
    mse_weight: float = 0.0
    # Speaker-adversarial training (training/adversary.py): a classifier names each segment's
    # training speaker from the LSTM output and the network is pushed, times this weight, away
    # from features that identify the voice. 0 = off (no head is built; checkpoints and exports are
    # the same either way); the default recipe has 0.3 since v28.
    speaker_adversary: float = 0.0
    # The head's learning rate as a multiple of the network's. At the network's 1e-4 it does not
    # learn (probe on v21 seed 42's LSTM output: speaker cross-entropy 2.70 -> 2.66 in 300 steps,
    # chance 2.71), and a head at chance reverses noise, not speaker information; at 100x it reaches
    # 1.76 (39 % of 15 speakers) in the same steps. Warm-up and plateau halving apply to it too.
    speaker_adversary_lr_factor: float = 100.0
    # How the network is pushed: "confusion" (make the head's prediction uniform; v28, shipped) or
    # "reverse" (gradient reversal: maximise the head's cross-entropy; v27 lost on dev with it,
    # driving the head above chance -- training/adversary.py says why).
    speaker_adversary_mode: str = "confusion"


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    name: str = "default"

    def resolved(self) -> "Config":
        """Derive the model's output heads from the loss weights (alpha/beta tasks add heads)."""
        outputs = ["valence", "arousal"]
        if self.loss.alpha > 0:
            outputs.append(self.data.alpha_target)
        if self.loss.beta > 0:
            outputs.append(self.data.beta_target)
        return replace(self, model=replace(self.model, outputs=tuple(outputs)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return json.loads(json.dumps(d))  # tuples -> lists

    def with_overrides(self, **sections: dict[str, Any]) -> "Config":
        return from_dict(_merge(self.to_dict(), sections))


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _section(cls, data: dict, name: str):
    try:
        return dataclass_from(cls, data, f"[{name}]")
    except TomlConfigError as e:
        raise ConfigError(str(e)) from None


def from_dict(d: dict[str, Any]) -> Config:
    unknown = set(d) - {"model", "data", "train", "loss", "augment", "name"}
    if unknown:
        raise ConfigError(f"unknown section(s) {sorted(unknown)}; expected model, data, train, loss, augment")
    cfg = Config(
        model=_section(ModelConfig, d.get("model", {}), "model"),
        data=_section(DataConfig, d.get("data", {}), "data"),
        train=_section(TrainConfig, d.get("train", {}), "train"),
        loss=_section(LossConfig, d.get("loss", {}), "loss"),
        augment=_section(AugmentConfig, d.get("augment", {}), "augment"),
        name=d.get("name", "default"),
    )
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    d, t = cfg.data, cfg.train
    if d.gold not in GOLD_METHODS:
        raise ConfigError(f"[data] gold must be one of {', '.join(GOLD_METHODS)}, not {d.gold!r}")
    if d.gold == "single" and not d.gold_annotator:
        raise ConfigError("[data] gold = 'single' needs gold_annotator")
    if d.normalisation not in NORMALISATIONS:
        raise ConfigError(f"[data] normalisation must be one of {', '.join(NORMALISATIONS)}, not {d.normalisation!r}")
    if len(d.split) != 3 or any(x < 0 for x in d.split) or abs(sum(d.split) - 1) > 1e-6:
        raise ConfigError("[data] split must be three non-negative fractions summing to 1")
    if d.label_rate_ms <= 0 or d.segment_s <= 0:
        raise ConfigError("[data] label_rate_ms and segment_s must be positive")
    frame_ms = 1000.0 / cfg.model.frame_rate
    seg_ms = d.segment_s * 1000
    if abs(seg_ms / d.label_rate_ms - round(seg_ms / d.label_rate_ms)) > 1e-6 or \
            abs(seg_ms / frame_ms - round(seg_ms / frame_ms)) > 1e-6:
        raise ConfigError(f"[data] segment_s must be a multiple of the label bin ({d.label_rate_ms} ms) "
                          f"and of the model frame ({frame_ms:g} ms)")
    if t.batch_size < 1 or t.epochs < 1 or t.lr <= 0 or not t.seeds:
        raise ConfigError("[train] batch_size, epochs, lr must be positive and seeds non-empty")
    if t.warmup_steps < 0 or t.collapse_restarts < 0 or not 0 < t.collapse_lr_factor <= 1:
        raise ConfigError("[train] warmup_steps and collapse_restarts must be >= 0, "
                          "collapse_lr_factor in (0, 1]")
    if d.min_segment_s < 0:
        raise ConfigError("[data] min_segment_s must be >= 0")
    if not 0 < t.lstm_lr_factor <= 1:
        raise ConfigError("[train] lstm_lr_factor must be in (0, 1]")
    if t.select_on not in ("valence", "arousal", "mean"):
        raise ConfigError("[train] select_on must be valence, arousal or mean")
    if cfg.loss.alpha < 0 or cfg.loss.beta < 0 or cfg.loss.mse_weight < 0 or cfg.loss.speaker_adversary < 0:
        raise ConfigError("[loss] alpha, beta, mse_weight and speaker_adversary must be >= 0")
    if cfg.loss.speaker_adversary_lr_factor <= 0:
        raise ConfigError("[loss] speaker_adversary_lr_factor must be > 0")
    if cfg.loss.speaker_adversary_mode not in ADVERSARY_MODES:
        raise ConfigError(f"[loss] speaker_adversary_mode must be one of {', '.join(ADVERSARY_MODES)}")
    if t.plateau_factor and (not 0 < t.plateau_factor < 1 or t.plateau_patience < 1):
        raise ConfigError("[train] plateau_factor must be in (0, 1) (0 = off) and plateau_patience >= 1")
    if not 0 <= t.ema_decay < 1:
        raise ConfigError("[train] ema_decay must be in [0, 1) (0 = off)")
    try:
        cfg.augment.validate()
    except ValueError as e:
        raise ConfigError(f"[augment] {e}") from None
    if d.gain_db > 0 and d.normalisation == "speech_rms":
        raise ConfigError("[data] gain_db would change the level after the speech_rms normalisation removed it; "
                          "use [augment] level_dbfs")
    if cfg.augment.enabled and "gsm" in cfg.augment.codecs and cfg.augment.p_codec > 0 and cfg.model.sample_rate != 8000:
        raise ConfigError("[augment] the gsm codec needs an 8000 Hz model; remove it from codecs")


def load_config(path: str | Path | None = None) -> Config:
    """Load a TOML config; ``None`` gives the paper's defaults (``configs/default.toml``)."""
    if path is None:
        return Config()
    path = Path(path)
    if not path.is_file():
        candidate = CONFIG_DIR / f"{path.name}" if path.suffix else CONFIG_DIR / f"{path}.toml"
        if candidate.is_file():
            path = candidate
        else:
            raise ConfigError(f"{path}: config file not found")
    try:
        data = read_toml(path)
    except TomlConfigError as e:
        raise ConfigError(str(e)) from None
    data.setdefault("name", path.stem)
    try:
        return from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
