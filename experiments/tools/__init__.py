"""Small commands around trained runs: `python -m experiments.tools.sample`,
`python -m experiments.tools.make_text_corpus`, `python -m experiments.tools.classify`."""
