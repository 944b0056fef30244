"""trainer.keep_freed_memory: freed CPU memory stays in the process, so re-allocation stops page-faulting."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from cli import REPO
from omegaconf import OmegaConf

from experiments import builders
from experiments.cpu_memory import _glibc

# Ten freshly written 8 MB tensors, freed and allocated again: what one training step does with activations.
CHURN = """
import resource, sys, torch
from experiments.cpu_memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
def churn():
    tensors = [torch.ones(2_000_000) for _ in range(10)]
    del tensors
churn(); churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    churn()
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def faults_per_churn(mode: str) -> tuple[bool, float]:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], cwd=REPO, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", float(faults)


@pytest.mark.skipif(_glibc() is None, reason="the malloc options exist in glibc only")
def test_kept_memory_is_reused_without_page_faults():
    applied, kept = faults_per_churn("keep")
    _, default = faults_per_churn("default")
    assert applied
    # 80 MB of fresh pages is 20,000 faults; by default glibc hands most of it back to the kernel every time.
    assert default > 5000
    assert kept < 100


@pytest.mark.parametrize("device, flag, expected", [("cpu", True, 1), ("cpu", False, 0), ("meta", True, 0)])
def test_trainer_setting_applies_on_cpu_only(monkeypatch, device, flag, expected):
    calls = []
    monkeypatch.setattr(builders, "keep_freed_memory", lambda: calls.append(1))
    builders.setup_host_memory(OmegaConf.create({"keep_freed_memory": flag}), torch.device(device))
    assert len(calls) == expected
