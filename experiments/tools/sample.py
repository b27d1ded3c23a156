"""Generate from a causal model, or fill [MASK]s with a bidirectional one, from a trained run.

    python -m experiments.tools.sample --workdir runs/gpt --prompt "s3 s17" --prompt "s40"
    python -m experiments.tools.sample --workdir runs/gpt_text --prompt "The river" \
        --temperature 0.8 --top_p 0.9
    python -m experiments.tools.sample --workdir runs/bert --prompt "s3 <mask> s17 s5 <mask> s9"
    python -m experiments.tools.sample --workdir runs/copy --prompt "s3 s17 s5 s9"

Prompts are text for runs on real text and space-separated symbols (`s0` .. `s127`, specials
such as `<mask>`) for the embedded HMM corpus; `<bos>` is prepended. Causal, prefix-LM and
hybrid runs generate (the prefix LM reads its prompt as its bidirectional prefix); BERT runs
fill masks; seq2seq runs read each prompt as a source (no `<bos>`) and decode greedily (the
Transformer with its decoder and encoder caches). Loads on CPU whatever trained the model
(train.inference.load_trained).
"""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

from models.decode import SamplingConfig, fill_mask, generate
from train.data.vocab import BOS_ID, EOS_ID, MASK_ID
from train.host_memory import retain_freed_memory
from train.inference import SymbolTokenizer, load_trained


def _encode(tokenizer, prompt: str) -> list[int]:
    if isinstance(tokenizer, SymbolTokenizer):
        return [BOS_ID] + tokenizer.encode([prompt])[0]
    # Text: [MASK] is written <mask>; pieces between masks are tokenised on their own.
    ids = [BOS_ID]
    for i, piece in enumerate(prompt.split("<mask>")):
        if i:
            ids.append(MASK_ID)
        if piece:
            ids += tokenizer.encode([piece])[0]
    return ids


def main(argv: list[str] | None = None) -> None:
    retain_freed_memory()  # before JAX starts its CPU client (train/host_memory.py)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="run folder, checkpoints/ or one step folder")
    parser.add_argument("--prompt", action="append", required=True, help="repeat for a batch")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    parser.add_argument("--top_k", type=int, default=0)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step", type=int, default=None, help="a checkpoint step (default: latest)")
    args = parser.parse_args(argv)

    trained = load_trained(args.workdir, step=args.step)
    tokenizer = trained.tokenizer
    prompts = [_encode(tokenizer, p) for p in args.prompt]
    print(f"# {trained.checkpoint} (step {trained.step}, objective {trained.objective})")
    if trained.objective == "seq2seq":
        _translate(trained, [p[1:] for p in prompts], args)
        return
    if trained.mask_kind == "bidirectional":
        if not any(MASK_ID in p for p in prompts):
            sys.exit("error: a bidirectional (BERT) model fills masks: put <mask> in the prompt")
        L = max(map(len, prompts))
        tokens = np.zeros((len(prompts), L), np.int32)
        seg = np.zeros_like(tokens)
        for i, p in enumerate(prompts):
            tokens[i, : len(p)], seg[i, : len(p)] = p, 1
        positions = np.where(seg > 0, np.arange(L)[None], 0).astype(np.int32)
        batch = {"tokens": tokens, "segment_ids": seg, "positions": positions}
        for prompt, row in zip(args.prompt, fill_mask(trained.model, batch, mask_id=MASK_ID), strict=True):
            print(f"\n{prompt}")
            for f in row:
                options = ", ".join(
                    f"{tokenizer.decode([t])!r} {p:.3f}" for t, p in zip(f.token_ids, f.probs, strict=True)
                )
                print(f"  position {f.position}: {options}")
        return
    cfg = SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        eos_id=EOS_ID,
    )
    out = generate(
        trained.model,
        prompts,
        cfg,
        jax.random.PRNGKey(args.seed),
        bidirectional_prompt=trained.objective == "prefix_lm",
    )
    for prompt, new, stopped in zip(args.prompt, out.tokens, out.stopped, strict=True):
        print(f"\n{prompt} -> {tokenizer.decode(new)}" + (" <eos>" if stopped else ""))


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
