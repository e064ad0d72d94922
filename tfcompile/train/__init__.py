"""The training layer on top of the runtime: a run's config and the run itself (``run``:
`RunConfig`, `run`), the loop (``loop``), the per-step log (``steplog``), checkpoints
(``checkpoint``) and the torchrun launcher of the benchmarks (``launch``)."""
