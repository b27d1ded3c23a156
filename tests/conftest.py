"""Shared helpers: a micro config that trains in seconds, the command line of a real run, one
persistent compilation cache for every process, and runs built once per session."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import sys
from collections.abc import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One persistent XLA compilation cache for the test processes and every process they start
# (subprocess_env copies this environment): the same train and eval steps compile once, not once
# per process. Only programs that take 0.3 s or more to compile are kept: writing the thousands
# of one-op programs that eager code compiles costs more than compiling them again (three
# in-process test files on a cold cache: 122 s with every program kept, 80 s with this; a micro
# run 10.4 s and 6.9 s cold, 5.6 s and 4.3 s warm). Set before JAX is imported; the size cap
# turns on the cache's file lock, which keeps parallel workers from reading an entry while
# another writes it.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(REPO, ".pytest_cache", "jax"))
# The tests' programs are tiny: XLA:CPU's backend optimisations cost more compile time than they
# save at run time (three in-process test files on a cold cache: 80 s with them, 51 s without; a
# micro run 8.6 s and 6.8 s). XLA:CPU's newer fusion emitters and its codegen split across threads
# cost compile time too (a micro train step 1.56 -> 0.65 s; test_block_options.py and
# test_switches.py on a cold cache 143 -> 80 s). Every test process and every process it starts
# uses the same flags, so whatever a test compares was computed alike.
TEST_XLA_FLAGS = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    " --xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1"
)
os.environ.setdefault("XLA_FLAGS", TEST_XLA_FLAGS)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 * 2**30))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import configs  # noqa: E402
from configs.sizes import SIZES  # noqa: E402
from experiments.tools.make_text_corpus import write_corpus  # noqa: E402  (re-exported for tests too)
from train.devices.startup import before_jax_starts  # noqa: E402

# As every entry point does, before any test starts a JAX backend (train/devices/startup.py).
before_jax_starts()

# Small enough that a real `train.main` process runs 40 steps in a few seconds on 2 cores.
MICRO_OVERRIDES = {
    **SIZES["micro"].overrides(),
    "model.max_len": 32,
    "seq_len": 32,
    "batch_size": 8,
    "hmm.num_states": 8,
    "hmm.num_symbols": 16,
    "hmm.eval_sequences": 16,
    "num_train_steps": 40,
    "log_every_steps": 5,
    "eval_every_steps": 10,
    "checkpoint_every_steps": 10,
    "optim.warmup_steps": 5,
    # Generation would compile at the first eval (~4 s a run); test_observability turns it on.
    "eval_samples": 0,
}


def micro_config(objective: str = "clm", **overrides):
    return configs.get_config(objective, "tiny", {**MICRO_OVERRIDES, **overrides})


def train_command(workdir: str, objective: str = "clm", variant: str = "tiny", **overrides) -> list[str]:
    """The command line of a micro run: the variant, then `MICRO_OVERRIDES`, then `overrides`."""
    return configs.train_command(objective, workdir, {**MICRO_OVERRIDES, **overrides}, variant)


def with_shard_bytes(cmd: list[str], shard_bytes: int, file_size_limit: int | None = None) -> list[str]:
    """`cmd` (a `train_command`) as a process whose token cache cuts the corpus into shards of
    `shard_bytes` of text, so that a small corpus builds in many shards (for kills mid-build);
    with `file_size_limit`, the process (and the workers it starts) cannot write larger files."""
    limit = f"import resource; resource.setrlimit(resource.RLIMIT_FSIZE, ({file_size_limit},) * 2); "
    code = (
        (limit if file_size_limit else "")
        + f"import sys; from train.data import corpus; corpus.SHARD_BYTES = {shard_bytes}; "
        "from absl import app; from train import main; from train.flag_errors import parse_flags; "
        "app.run(main.main, argv=['train.main', *sys.argv[1:]], flags_parser=parse_flags)"
    )
    return [sys.executable, "-c", code, *cmd[3:]]


def process_commands(cmd: list[str], count: int = 2) -> list[list[str]]:
    """The command of each process of a `count`-process run on loopback (as on `count` hosts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flags = [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={count}"]
    return [cmd + flags + [f"--process_id={i}"] for i in range(count)]


def run_command(cmd: list[str], env: dict[str, str] | None = None):
    """A command run to its end from the repo root (default env: `subprocess_env()`), output captured."""
    import subprocess

    return subprocess.run(
        cmd, cwd=REPO, env=env or subprocess_env(), capture_output=True, text=True, timeout=600
    )


def start_processes(workdir: str, count: int = 2, **overrides) -> list:
    """The processes of a `count`-process micro run (loopback), started; stderr piped as text."""
    import subprocess

    return [
        subprocess.Popen(
            cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for cmd in process_commands(train_command(workdir, **overrides), count)
    ]


def shared_folder(tmp_path_factory, name: str, make: Callable[[str], None]) -> str:
    """A folder that `make(path)` fills once per test session, shared by every pytest-xdist
    worker: the first to ask builds it under a file lock, the others wait and reuse it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' base temps are siblings in one session folder
    path, done = os.path.join(root, name), os.path.join(root, f"{name}.done")
    with open(os.path.join(root, f"{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(done):
            shutil.rmtree(path, ignore_errors=True)
            make(path)
            open(done, "w").close()
    return path


def _finished_run(objective: str, devices: int = 1, **overrides) -> Callable[[str], None]:
    def make(workdir: str) -> None:
        env = device_env(devices) if devices > 1 else None
        result = run_command(train_command(workdir, objective, **overrides), env)
        assert result.returncode == 0, result.stderr[-3000:]
        with open(f"{workdir}.stderr.txt", "w") as f:
            f.write(result.stderr)

    return make


# The files that take longest (seconds on 2 cores, cold), run first: pytest-xdist hands each
# worker whole files (`--dist loadfile`) in collection order, so with the longest first the
# workers finish together instead of one waiting on a long file started last.
LONGEST_FIRST = (  # 240, 140, 110, 95, 85, 80, 80, 75 s, then 30 to 65 s each (the slower machine)
    *("test_run.py", "test_aot.py", "test_benchmark.py", "test_ablate.py"),
    *("test_preemption_multiprocess.py", "test_compare.py", "test_scaling.py", "test_observability.py"),
    *("test_block_options.py", "test_switches.py", "test_train_step.py", "test_device_count_resume.py"),
    *("test_preemption.py", "test_export_hf.py", "test_write_failure.py", "test_seq2seq_runs.py"),
    *("test_hf_tokenizer.py", "test_seq2seq.py", "test_multihost.py", "test_host_memory.py"),
    *("test_model.py", "test_nonfinite.py", "test_token_cache.py"),
)


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist (3.7 and later) reorders `--dist loadfile`'s files by their number of tests
    # unless told not to, which put the long files with few tests last and left one worker
    # finishing them alone.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory) -> str:
    """The workdir of an uninterrupted micro GPT run (`train_command` defaults), for every test
    that only reads it or copies it; what it printed is in WORKDIR.stderr.txt beside it."""
    return shared_folder(tmp_path_factory, "micro_run", _finished_run("clm"))


@pytest.fixture(scope="session")
def micro_bert_run(tmp_path_factory) -> str:
    """As `micro_run`, for the masked LM."""
    return shared_folder(tmp_path_factory, "micro_bert_run", _finished_run("mlm"))


@pytest.fixture(scope="session")
def two_device_run(tmp_path_factory) -> str:
    """As `micro_run`, data parallel over 2 CPU devices in one process."""
    return shared_folder(tmp_path_factory, "two_device_run", _finished_run("clm", devices=2))


@pytest.fixture(scope="session")
def four_device_run(tmp_path_factory) -> str:
    """As `micro_run`, over 4 CPU devices as a mesh of data 2 x fsdp 2 (state sharded in pairs)."""
    return shared_folder(
        tmp_path_factory, "four_device_run", _finished_run("clm", devices=4, **{"mesh.fsdp": 2})
    )


def text_overrides(folder: str) -> dict[str, str | int]:
    """The overrides of a micro run on `micro_text_runs`'s corpus and token cache (in `folder`)."""
    return {
        "dataset": f"text:{os.path.join(folder, 'corpus', '*.txt')}",
        "tokenizer.vocab_size": 512,
        "data_cache_dir": os.path.join(folder, "cache"),
    }


@pytest.fixture(scope="session")
def micro_text_runs(tmp_path_factory) -> dict[str, str]:
    """Uninterrupted micro runs of both objectives on 60 generated text files, sharing one token
    cache: `{"clm": workdir, "mlm": workdir, "overrides": text_overrides(...)}`. Tests that read
    the runs or start more runs on the same data (reading the built cache) share them."""

    def make(folder: str) -> None:
        write_corpus(os.path.join(folder, "corpus"), n_files=60)
        for objective in ("clm", "mlm"):
            result = run_command(
                train_command(os.path.join(folder, objective), objective, **text_overrides(folder))
            )
            assert result.returncode == 0, result.stderr[-3000:]

    folder = shared_folder(tmp_path_factory, "micro_text_runs", make)
    return {o: os.path.join(folder, o) for o in ("clm", "mlm")} | {"overrides": text_overrides(folder)}


@pytest.fixture(scope="session")
def two_process_run(tmp_path_factory) -> str:
    """The workdir of an uninterrupted two-process micro run (shared by the multi-process tests)."""

    def make(workdir: str) -> None:
        procs = start_processes(workdir)
        errs = [p.communicate(timeout=600)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], errs[0][-3000:] + errs[1][-3000:]

    return shared_folder(tmp_path_factory, "two_process_run", make)


def device_env(devices: int) -> dict[str, str]:
    """`subprocess_env()` for a process that sees `devices` CPU devices."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    return {**subprocess_env(), "XLA_FLAGS": flags.strip()}


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


@pytest.fixture
def micro():
    return micro_config


def tensorboard_events(folder: str) -> list[tuple[str, int, object]]:
    """(tag, step, value) of every scalar (a float) and text (a str) in the TensorBoard event
    files under `folder`, as TensorBoard's own reader (`EventAccumulator`) loads them."""
    import glob

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = glob.glob(os.path.join(folder, "**", "events.out.tfevents.*"), recursive=True)
    out = []
    for run in sorted({os.path.dirname(f) for f in files}):
        events = EventAccumulator(run, size_guidance={"scalars": 0, "tensors": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            out += [(tag, e.step, e.value) for e in events.Scalars(tag)]
        for tag in events.Tags()["tensors"]:
            out += [(tag, e.step, e.tensor_proto.string_val[0].decode()) for e in events.Tensors(tag)]
    return out


# -- the token cache (tests/test_token_cache.py, tests/test_token_cache_faults.py) ---------------


def cache_config(module, dataset: str, cache, **kw):
    """`module`'s tiny config on `dataset` with its token cache in `cache` (rows of 64, batch 8)."""
    c = module.get_config("tiny")
    c.dataset, c.data_cache_dir = dataset, str(cache)
    c.tokenizer.vocab_size = 512
    c.seq_len, c.batch_size = 64, 8
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def assert_rows_equal(stored: tuple[np.ndarray, np.ndarray], expected: tuple[np.ndarray, np.ndarray]):
    for got, want in zip(stored, expected, strict=True):
        assert got.shape == want.shape
        np.testing.assert_array_equal(np.asarray(got, np.int32), want)
