"""cusemo-batch: continuous speech-emotion (valence, arousal) analytics for call-center recordings.

The runtime (this package minus ``training``/``export``) needs only numpy, scipy, polars, pyarrow,
soundfile and onnxruntime -- never torch.
"""

__version__ = "0.1.0"
