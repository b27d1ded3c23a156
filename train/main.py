"""Command line: flags -> config -> `train_and_evaluate(config, workdir)`; nothing else.

    python -m train.main --config configs/gpt.py:tiny --workdir runs/gpt
    python -m train.main --config configs/bert.py:tiny --workdir runs/bert --config.num_train_steps=500
    # two processes (hosts), each with its devices; the same command with --process_id=1 on the other
    python -m train.main --config configs/gpt.py:tiny --workdir /shared/runs/gpt \
        --coordinator_address=host0:1234 --num_processes=2 --process_id=0

Rerunning the same command in the same workdir resumes from its latest complete checkpoint.
Exit status: 0 done; 2 bad config, another run's checkpoint, none intact, workdir busy; 3
non-finite loss or gradients; 4 a failed write (disk full, permissions); 143 / 130 stopped by
SIGTERM / SIGINT after checkpointing (docs/reliability.md).
"""

from __future__ import annotations

import logging
import shlex
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from models.errors import ConfigError
from train.checkpoint.manager import WRITE_FAILED_EXIT, CheckpointWriteError
from train.checkpoint.nonfinite import EXIT_STATUS as NONFINITE_EXIT
from train.checkpoint.nonfinite import NonFiniteError
from train.checkpoint.preemption import Preempted
from train.checkpoint.restore import CheckpointMismatch
from train.devices.startup import before_jax_starts
from train.flag_errors import parse_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<name>.py:<variant>", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, TensorBoard.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "host:port of process 0, for a multi-process run (jax.distributed)"
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "number of processes of a multi-process run")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "this process's index in [0, num_processes)")
_DISTRIBUTED_AUTO = flags.DEFINE_bool(
    "distributed_auto", False, "join a multi-process run detected from the cluster (TPU pod, SLURM, ...)"
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    """Sets up logging and `jax.distributed`, trains, and maps each way a run ends to its exit
    status (module docstring)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    before_jax_starts()  # train/devices/startup.py
    # Orbax and JAX log every checkpoint at INFO through absl; keep the run's own lines readable.
    absl_logging.set_verbosity(absl_logging.WARNING)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    project_log = logging.getLogger("train")
    project_log.addHandler(handler)
    project_log.setLevel(logging.INFO)
    project_log.propagate = False
    # Imported here so `--help` and flag errors do not pay for JAX start-up.
    import jax

    from train.devices.mesh import initialize_distributed
    from train.hf.weights import run_export_errors
    from train.loop.trainer import train_and_evaluate
    from train.observe.finish import finished_message

    n, i = _NUM_PROCESSES.value, _PROCESS_ID.value
    if _COORDINATOR.value and not (n > 0 and 0 <= i < n):
        raise app.UsageError(
            "--coordinator_address needs --num_processes and --process_id in [0, num_processes)"
        )
    initialize_distributed(_COORDINATOR.value, n, i, auto=_DISTRIBUTED_AUTO.value)

    try:
        command = "python -m train.main " + shlex.join(sys.argv[1:])
        summary = train_and_evaluate(_CONFIG.value, _WORKDIR.value, command)
    except (ConfigError, CheckpointMismatch) as e:  # a second launcher too (train/checkpoint/workdir_lock.py)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (CheckpointWriteError, OSError) as e:  # disk full, permissions: on checkpoints or logs
        # Orbax's abandoned write tasks would log the same error again at exit, after this line.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(WRITE_FAILED_EXIT)
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(NONFINITE_EXIT)
    except Preempted as e:  # not an error: the same command resumes
        print(str(e), file=sys.stderr)
        sys.exit(e.exit_status)
    if jax.process_index() == 0:
        exportable = not run_export_errors(_CONFIG.value)
        print(finished_message(summary, _WORKDIR.value, _CONFIG.value, exportable), file=sys.stderr)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
