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

PROBE = """
import ctypes, resource, sys, torch
from experiments.cpu_memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
# One 30 MB tensor: does malloc mmap it, and does it keep the memory once the tensor is freed?
before = libc.mallinfo2().hblkhd
big = torch.ones(7_500_000)
mapped = libc.mallinfo2().hblkhd - before
del big
kept = libc.mallinfo2().fordblks
# 25 freshly written 8 MB tensors, freed and allocated again: what a training step does with its activations.
def churn():
    tensors = [torch.ones(2_000_000) for _ in range(25)]
    del tensors
churn(); churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    churn()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
print(applied, mapped / 1e6, kept / 1e6, faults)
"""


def probe(mode: str) -> tuple[bool, float, float, float]:
    """(applied, MB mmapped for a 30 MB tensor, MB malloc holds free after it, page faults per churn)."""
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, capture_output=True, text=True, check=True)
    applied, mapped, kept, faults = out.stdout.split()
    return applied == "True", float(mapped), float(kept), float(faults)


@pytest.mark.skipif(_glibc() is None, reason="the malloc options exist in glibc only")
def test_freed_memory_stays_in_the_process_and_is_reused_without_page_faults():
    applied, mapped, kept, faults = probe("keep")
    assert applied
    assert mapped == 0 and kept >= 30  # from the heap, and still there after the free
    # 200 MB of fresh pages would be 49,000 faults; the kept memory is reused (a few hundred remain at most).
    assert faults < 1000


@pytest.mark.skipif(_glibc() is None, reason="the malloc options exist in glibc only")
def test_by_default_glibc_maps_a_large_block_and_hands_it_back():
    # What the setting changes: in a fresh process glibc mmaps a 30 MB block and unmaps it on free, so the
    # next allocation faults its pages in again. (How often the 8 MB churn faults by default depends on the
    # process's allocation history: 400 to 47,000 times per churn here, so it is not asserted.)
    applied, mapped, kept, _ = probe("default")
    assert not applied
    assert mapped >= 30 and kept < 30


@pytest.mark.parametrize("device, flag, expected", [("cpu", True, 1), ("cpu", False, 0), ("meta", True, 0)])
def test_trainer_setting_applies_on_cpu_only(monkeypatch, device, flag, expected):
    calls = []
    monkeypatch.setattr(builders, "keep_freed_memory", lambda: calls.append(1))
    builders.setup_host_memory(OmegaConf.create({"keep_freed_memory": flag}), torch.device(device))
    assert len(calls) == expected
