"""What a scoring run is told: :class:`ScoreOptions` -- the options that change the numbers (hashed
into every stored result's key, so a change rescores) and those that only change speed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from . import changes, silence, timegrid
from .calls import DiscoveryOptions
from .model import DEFAULT_CHUNK_S


@dataclass(frozen=True)
class ScoreOptions:
    """What changes the numbers (hashed into the manifest key) and what only changes speed.

    Build it flat with :meth:`make` (its own fields and :class:`DiscoveryOptions`' as keywords);
    :meth:`result_hash` names the options whose change makes the nightly job rescore a call.

    Examples
    --------
    >>> import cusemo_batch as cb
    >>> o = cb.ScoreOptions.make(rate_s=1.0, roles={"SPEAKER_00": "agent"})
    >>> o.rate_s, o.discovery.roles
    (1.0, {'SPEAKER_00': 'agent'})
    >>> o.result_hash() == cb.ScoreOptions.make(rate_s=1.0, roles={"SPEAKER_00": "agent"}, max_batch=1).result_hash()
    True
    """

    rate_s: float = 0.5  # output window (the annotation rate)
    compress_silence: bool = True
    min_silence_s: float = silence.MIN_SILENCE_S
    keep_silence_s: float = silence.KEEP_SILENCE_S
    discovery: DiscoveryOptions = field(default_factory=DiscoveryOptions)
    change_config: changes.ChangeConfig = field(default_factory=changes.ChangeConfig)
    chunk_s: float = DEFAULT_CHUNK_S  # audio per batch row per streaming step (see below)
    # A speaker with less detected speech than this is an error (TooShortError), not a row of
    # numbers: the model's 0.5 s label windows need a few of them to say anything, and a 0.2 s
    # file (a dropped connection, a test tone) must not pass for a call.
    min_speech_s: float = 1.0
    # speed only:
    batch_seconds: float = 1800.0  # audio seconds (padded) per inference batch
    # Batch rows, and audio per row per streaming step. Speed: the first conv block writes 50 floats
    # per input sample, so small steps keep its output in cache (measured on 2 cores, 60 calls of
    # 40-120 s: batch 8 x 10 s steps 5.6 s; 8 x 2 s 4.5-4.8 s; 16 x 1 s 5.0 s; 4 x 3 s 3.95-4.4 s;
    # fewer rows also pad less), and with int8 convolutions a lone 2 h call runs as fast in 3 s
    # chunks as in 12 s ones (5.2-5.4 s vs 4.9-5.1 s of inference). Accuracy: an int8 model
    # quantizes activations per chunk (per row for the convolutions, per chunk for the dynamic
    # LSTM), so longer chunks lose int8 resolution on quiet passages. Measured, previous default
    # model vs its fp32 export on 9 calls, RMSE / SD of arousal (largest frame error): 3 s chunks 0.009
    # (0.08); 6 s 0.012 (0.19); 12 s 0.021 (0.47); 60 s 0.107 (0.67).
    max_batch: int = 4
    prefetch: int = 8  # calls decoded ahead of inference (overlaps decoding with ORT)

    @classmethod
    def make(cls, **options: Any) -> "ScoreOptions":
        """Options from flat keywords: ScoreOptions fields and DiscoveryOptions fields mixed.

        ``ScoreOptions.make(roles={"SPEAKER_00": "agent"}, speakers=("client",), rate_s=1.0)`` --
        the roles and speakers belong to discovery, the rate to scoring; an unknown name is a
        TypeError listing the known ones.
        """
        own = {f.name for f in fields(cls)} - {"discovery"}
        disc = {f.name for f in fields(DiscoveryOptions)}
        unknown = sorted(set(options) - own - disc)
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(own | disc))}")
        discovery = DiscoveryOptions(**{k: v for k, v in options.items() if k in disc})
        return cls(discovery=discovery, **{k: v for k, v in options.items() if k in own})

    def validate(self) -> None:
        """Raise ValueError (one line) for options no call can be scored with; see DiscoveryOptions.validate."""
        self.discovery.validate()
        if self.rate_s <= 0 or self.chunk_s <= 0 or self.max_batch < 1 or self.batch_seconds <= 0:
            raise ValueError("rate_s, chunk_s, batch_seconds must be > 0 and max_batch >= 1")
        if self.min_speech_s < 0:
            raise ValueError("min_speech_s must be >= 0")
        if self.compress_silence and not 0 <= self.keep_silence_s < self.min_silence_s:
            raise ValueError("keep_silence_s must be >= 0 and shorter than min_silence_s")

    def result_hash(self) -> str:
        """Hash of every option that changes the output values (speed options excluded)."""
        d = {"rate_s": self.rate_s, "compress_silence": self.compress_silence, "vad": silence.VAD_VERSION,
             "pooling": timegrid.POOLING_VERSION,
             "chunk_s": self.chunk_s,  # int8 activation scales are per streaming step
             "min_speech_s": self.min_speech_s,
             "min_silence_s": self.min_silence_s, "keep_silence_s": self.keep_silence_s,
             "discovery": {k: v for k, v in asdict(self.discovery).items() if k != "follow_symlinks"},
             "changes": asdict(self.change_config)}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
