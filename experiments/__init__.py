"""Experiments on trained models, one package per command: `ablate` (the ablation tables),
`compare` (the objectives compared), `bench` (speed), `downstream` (evaluations beyond the own
loss), `tools` (sampling, a text corpus, classification); `common` and `runs` serve them all."""

import train  # noqa: E402, F401  (first: its __init__ settles the platform before JAX starts)
