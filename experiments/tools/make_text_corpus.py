"""Writes a folder of English-like text files, for trying and benchmarking the `text:` pipeline
where no real corpus can be downloaded:

    python -m experiments.tools.make_text_corpus --out /tmp/corpus --files 2000
    python -m train.main --config configs/gpt.py:tiny --workdir runs/gpt_text \
        --config.dataset=text:'/tmp/corpus/*.txt' --config.tokenizer.vocab_size=2048

Words are pseudo-words drawn from a Zipfian lexicon, in sentences and blank-line paragraphs.
The text has no grammar: it exercises the pipeline, it is not a language to study.
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def write_corpus(
    folder, n_files: int = 20, paragraphs: int = 4, seed: int = 0, lexicon_size: int = 400
) -> str:
    """Writes `n_files` files into `folder`; returns the glob that matches them."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkqjxz"))
    lexicon = ["".join(rng.choice(letters, rng.integers(1, 9))) for _ in range(lexicon_size)]
    p = 1.0 / np.arange(1, len(lexicon) + 1)
    p /= p.sum()
    os.makedirs(folder, exist_ok=True)
    for f in range(n_files):
        paras = []
        for _ in range(paragraphs):
            sentences = []
            for _ in range(int(rng.integers(2, 6))):
                words = rng.choice(lexicon, int(rng.integers(4, 14)), p=p)
                sentences.append(" ".join(words).capitalize() + ".")
            paras.append(" ".join(sentences))
        with open(os.path.join(folder, f"doc{f:05d}.txt"), "w") as fh:
            fh.write("\n\n".join(paras) + "\n")
    return os.path.join(str(folder), "*.txt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--paragraphs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_corpus(args.out, args.files, args.paragraphs, args.seed, lexicon_size=5000))


if __name__ == "__main__":
    main()
