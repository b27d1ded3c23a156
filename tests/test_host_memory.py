"""train/devices/host_memory.py: with glibc's malloc told to keep freed memory, a jitted step stops
page-faulting its temporary buffer in anew on every call; without it (the default) it does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, subprocess_env

# A jitted MLP forward + backward whose temporary buffer is ~100 MB (its hidden activations: the
# narrow model width keeps the FLOPs small); prints the mean minor page faults of a call once the
# heap has settled, and that buffer's size in 4 KiB pages.
_PROBE = """
import json, resource, sys
from train.devices.host_memory import retain_freed_memory
tuned = retain_freed_memory() if sys.argv[1] == "tune" else False
import jax, jax.numpy as jnp
keys = jax.random.split(jax.random.PRNGKey(0), 9)
x = jax.random.normal(keys[0], (2048, 64))
ws = [jax.random.normal(k, (64, 1024) if i % 2 == 0 else (1024, 64)) * 0.05 for i, k in enumerate(keys[1:])]
def loss(x, ws):
    for up, down in zip(ws[::2], ws[1::2]):
        x = x + jax.nn.gelu(x @ up) @ down
    return (x ** 2).sum()
step = jax.jit(jax.grad(loss, argnums=(0, 1)))
temp_pages = step.lower(x, ws).compile().memory_analysis().temp_size_in_bytes / 4096
faults = []
for _ in range(30):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    jax.block_until_ready(step(x, ws))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
# The heap settles over the first steps. Later, on a loaded machine, the executor threads' order
# of allocation can still leave no free chunk large enough, so the heap occasionally grows by a
# buffer: the mean over the later steps is the steady state, not any one step.
print(json.dumps({"tuned": tuned, "faults_per_step": sum(faults[10:]) / 20, "temp_pages": temp_pages}))
"""


def _probe(mode: str, **env) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        cwd=REPO,
        env={**subprocess_env(), "JAX_PLATFORMS": "cpu", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _glibc() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").gnu_get_libc_version  # noqa: B018
        return True
    except (OSError, AttributeError):
        return False


needs_glibc = pytest.mark.skipif(not (sys.platform.startswith("linux") and _glibc()), reason="glibc only")


@pytest.mark.slow
@needs_glibc
def test_retained_memory_stops_per_step_page_faults():
    tuned = _probe("tune")
    assert tuned["tuned"]
    assert tuned["temp_pages"] > 10_000  # the probe does need a large temporary buffer
    # Without the setting every step faults its whole buffer in (the next test); with it, a
    # step faults on average under a tenth of it, also with other processes competing for the
    # cores (measured: 3% with two busy loops on 2 cores, 0% on an idle machine).
    assert tuned["faults_per_step"] < 0.1 * tuned["temp_pages"], tuned


@pytest.mark.slow
@needs_glibc
def test_default_malloc_faults_the_temporary_buffer_in_every_step():
    """The problem the setting exists for, on this machine (not with always-on huge pages,
    where the kernel faults 2 MiB at a time)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            if "[always]" in f.read():
                pytest.skip("transparent huge pages always on: few faults either way")
    except OSError:
        pass
    default = _probe("default")
    assert not default["tuned"]
    assert default["faults_per_step"] > 0.5 * default["temp_pages"], default


@pytest.mark.slow
@needs_glibc
def test_opt_out_and_accelerators_leave_malloc_alone():
    script = "from train.devices.host_memory import retain_freed_memory; print(retain_freed_memory())"
    opt_out = {"JAX_PLATFORMS": "cpu", "GPTBERT_HOST_MALLOC": "default"}
    for env in (opt_out, {"JAX_PLATFORMS": "cuda"}, {"JAX_PLATFORMS": "tpu,cpu"}):
        cmd = [sys.executable, "-c", script]
        out = subprocess.run(cmd, cwd=REPO, env={**subprocess_env(), **env}, capture_output=True, text=True)
        assert out.stdout.strip() == "False", (env, out.stderr[-2000:])


@pytest.mark.slow
def test_too_late_is_refused_with_a_warning():
    script = (
        "import jax; jax.devices()\n"
        "from train.devices.host_memory import retain_freed_memory\n"
        "print(retain_freed_memory())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=subprocess_env(), capture_output=True, text=True
    )
    assert out.stdout.strip() == "False"
    assert "Call it first thing" in out.stderr


_STARTUP = (
    "from train.devices.startup import before_jax_starts\n"
    "tuned = before_jax_starts()\n"
    "import jax\n"
    "print(tuned, jax.devices()[0].platform)\n"
)


@pytest.mark.slow
@needs_glibc
def test_a_host_without_accelerators_runs_on_the_cpu_quietly_with_their_compilers_installed():
    """The test extra installs libtpu and the CUDA plugin (ahead-of-time TPU and GPU compiles);
    on a host with neither accelerator an entry point neither probes for one (libtpu's and the
    plugin's initialisation errors) nor skips the host allocator setting. The process boundary
    is the property: the platform is settled before JAX starts."""
    env = {k: v for k, v in subprocess_env().items() if k != "JAX_PLATFORMS"}
    out = subprocess.run([sys.executable, "-c", _STARTUP], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "cpu"]
    for noise in ("TPU", "libtpu", "InitGoogle", "CUDA", "cuda"):
        assert noise not in out.stderr, out.stderr[-2000:]


def test_the_platform_is_left_to_jax_where_it_is_set_or_an_accelerator_may_be_attached(monkeypatch):
    from train.devices import platform

    monkeypatch.setattr(platform, "libtpu_installed", lambda: True)
    monkeypatch.setattr(platform, "gpu_plugin_installed", lambda: False)
    monkeypatch.setattr(platform, "gpu_attached", lambda: False)
    monkeypatch.setenv("JAX_PLATFORMS", "tpu")
    assert not platform.skip_absent_accelerators() and os.environ["JAX_PLATFORMS"] == "tpu"
    monkeypatch.delenv("JAX_PLATFORMS")
    monkeypatch.setattr(platform, "tpu_attached", lambda: True)
    assert not platform.skip_absent_accelerators() and "JAX_PLATFORMS" not in os.environ
    monkeypatch.setattr(platform, "tpu_attached", lambda: False)
    # The CUDA plugin (the GPU compiler of the test extra) on a host with no GPU: the CPU.
    monkeypatch.setattr(platform, "gpu_plugin_installed", lambda: True)
    assert not platform.model_runs_on_host()
    assert platform.skip_absent_accelerators() and os.environ["JAX_PLATFORMS"] == "cpu"
    assert platform.model_runs_on_host()
    monkeypatch.delenv("JAX_PLATFORMS")
    monkeypatch.setattr(platform, "gpu_attached", lambda: True)
    assert not platform.skip_absent_accelerators() and "JAX_PLATFORMS" not in os.environ
    monkeypatch.setattr(platform, "libtpu_installed", lambda: False)
    monkeypatch.setattr(platform, "gpu_plugin_installed", lambda: False)
    assert not platform.skip_absent_accelerators() and "JAX_PLATFORMS" not in os.environ
