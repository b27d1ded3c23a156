"""What a finished run says last: that it is done, its final eval metrics, where its results
are, and the commands that use them (sample, export, TensorBoard)."""

from __future__ import annotations

import json
import os
from typing import Any


def _example_prompt(config: Any) -> str:
    words = ("s3", "s17") if config.dataset in ("hmm", "span:hmm") else ("The", "river")
    return " ".join(words) if config.mask == "causal" else f"{words[0]} <mask> {words[1]}"


def finished_message(summary: dict[str, Any], workdir: str, config: Any, exportable: bool) -> str:
    """The closing lines of a run (printed by process 0); the export command when `exportable`."""
    step = summary["final_step"]
    metrics = {k: round(v, 4) for k, v in summary["eval"].items()}
    sample = f'python -m experiments.tools.sample --workdir {workdir} --prompt "{_example_prompt(config)}"'
    export = f"python -m train.hf.export --workdir {workdir} --out exported/{os.path.basename(workdir)}"
    return "\n".join(
        [
            f"done: step {step} in {workdir}; final eval {json.dumps(metrics)}",
            f"  summary:     {os.path.join(workdir, 'summary.json')}",
            f"  checkpoint:  {os.path.join(workdir, 'checkpoints', str(step))}",
            f"  metrics:     {os.path.join(workdir, 'metrics.jsonl')}",
            f"  TensorBoard: {os.path.join(workdir, 'tensorboard')} (tensorboard --logdir {workdir})",
            f"  sample:      {sample}",
            *([f"  export:      {export}"] if exportable else []),
        ]
    )
