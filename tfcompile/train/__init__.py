"""The training layer on top of the runtime: the loop (``loop``), the per-step log
(``steplog``) and checkpoints (``checkpoint``)."""
