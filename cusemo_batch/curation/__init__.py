"""Dataset curation (``cusemo-batch prepare``): the paper's dataset work as reusable steps.

* :mod:`.agreement` -- inter-annotator agreement per call (ICC(3,1), Pearson, Krippendorff's alpha)
  and for the call-level context variables;
* :mod:`.select` -- the paper's training-set rule (client calls with valence ICC(3,1) > 0.7) and the
  gold standard (mean of the annotators);
* :mod:`.compress` -- silence compression of audio files with a time map next to each output
  (the same functions as the scorer: :mod:`cusemo_batch.silence`);
* :mod:`.f0` -- F0 variability per call and speaker (librosa's pYIN by default; openSMILE's eGEMAPS
  F0 as an option, research licence only), ranked, to choose emotionally varied calls to annotate.

Nothing here imports torch; librosa, krippendorff and matplotlib come with the ``prepare`` extra,
openSMILE with the ``opensmile`` extra, and are imported where they are used.
"""
