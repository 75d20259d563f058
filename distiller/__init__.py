"""The embedded DDK distiller: a teacher's knowledge into a student, more of it where the student lags.

Reading order: ``config`` (what a run is told) → ``trainer`` (the loop, top to bottom) → what the
loop stands on: ``sources`` (each domain's rows and DDK's measurement), ``data`` (JSON Lines,
blocks, the weighted domain sampler), ``ddk`` (Eq. 1 and 2, the mixtures), ``step`` (the loss of one
batch per ``--kd`` mode), ``losses`` and ``dskd`` (the divergences, on tensors), ``measure``
(perplexity, bits per byte), ``pairs`` (two tokenizations of one text), ``checkpoint`` and
``files`` (nothing half-written). It imports nothing from the harness: it knows a mixture and a
set of domain files, not where the gaps came from (docs/architecture.md).
"""
