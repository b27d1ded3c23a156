"""Speed measurements: `python -m experiments.bench ...` (train step, decoding, the Hugging Face
baseline), `python -m experiments.bench.attention`, `python -m experiments.bench.input`."""
