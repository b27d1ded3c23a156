"""Generate from a causal model, or fill [MASK]s with a bidirectional one, from a trained run.

    python -m experiments.tools.sample --workdir runs/gpt --prompt "s3 s17" --prompt "s40"
    python -m experiments.tools.sample --workdir runs/gpt_text --prompt "The river" \
        --temperature 0.8 --top_p 0.9
    python -m experiments.tools.sample --workdir runs/bert --prompt "s3 <mask> s17 s5 <mask> s9"
    python -m experiments.tools.sample --workdir runs/copy --prompt "s3 s17 s5 s9"

Prompts are text for runs on real text and space-separated symbols (`s0` .. `s127`, specials
such as `<mask>`) for the embedded HMM corpus; the mask token is the tokenizer's (`<mask>`, or
`[MASK]` for a BERT tokenizer.json). Causal, prefix-LM and hybrid runs generate (the prefix LM
reads its prompt as its bidirectional prefix); BERT runs fill masks: both through the string API
of the loaded model (train/inference/text_api.py). Seq2seq runs read each prompt as a source (no `<bos>`)
and decode greedily (the Transformer with its decoder and encoder caches). Loads on CPU whatever
trained the model (train.inference.load.load_trained), or a Hugging Face directory (--hf).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from train.devices.startup import before_jax_starts
from train.inference.load import load_hf, load_trained
from train.tokenizer.vocab import BOS_ID, EOS_ID


def main(argv: list[str] | None = None) -> None:
    before_jax_starts()  # train/devices/startup.py
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--workdir", help="run folder, checkpoints/ or one step folder")
    where.add_argument("--hf", help="a local Hugging Face GPT-2 / BERT directory")
    parser.add_argument("--prompt", action="append", required=True, help="repeat for a batch")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    parser.add_argument("--top_k", type=int, default=0)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step", type=int, default=None, help="a checkpoint step (default: latest)")
    args = parser.parse_args(argv)

    trained = load_hf(args.hf) if args.hf else load_trained(args.workdir, step=args.step)
    print(f"# {trained.checkpoint} (step {trained.step}, objective {trained.objective_name})")
    if trained.objective_name == "seq2seq":
        _translate(trained, [trained.tokenizer.encode([p])[0] for p in args.prompt], args)
        return
    try:
        if trained.mask_kind == "bidirectional":
            for prompt, masks in zip(args.prompt, trained.fill_mask(args.prompt, top_k=5), strict=True):
                print(f"\n{prompt}")
                for k, predictions in enumerate(masks):
                    print(f"  mask {k}: " + ", ".join(f"{p.token!r} {p.prob:.3f}" for p in predictions))
            return
        out = trained.generate(
            args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed
        )
    except ValueError as e:
        sys.exit(f"error: {e}")
    for prompt, new in zip(args.prompt, out, strict=True):
        print(f"\n{prompt} -> {new}")


def _translate(trained, sources: list[list[int]], args: argparse.Namespace) -> None:
    from models.seq2seq_decode import greedy_decode

    S = max(map(len, sources))
    batch = {"src_tokens": np.zeros((len(sources), S), np.int32)}
    batch["src_segment_ids"] = np.zeros_like(batch["src_tokens"])
    for i, src in enumerate(sources):
        batch["src_tokens"][i, : len(src)], batch["src_segment_ids"][i, : len(src)] = src, 1
    batch["src_positions"] = np.where(batch["src_segment_ids"] > 0, np.arange(S)[None], 0).astype(np.int32)
    use_cache = hasattr(trained.model, "init_cache")  # the LSTM baselines recompute
    out = greedy_decode(
        trained.model, batch, args.max_new_tokens, bos_id=BOS_ID, eos_id=EOS_ID, use_cache=use_cache
    )
    for prompt, row in zip(args.prompt, out, strict=True):
        ids = row.tolist()
        stopped = EOS_ID in ids
        ids = ids[: ids.index(EOS_ID)] if stopped else ids
        print(f"\n{prompt} -> {trained.tokenizer.decode(ids)}" + (" <eos>" if stopped else ""))


if __name__ == "__main__":
    main()
