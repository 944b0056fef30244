"""trainer.device=auto spreads training processes over the visible GPUs (experiments/device_slots.py), tested with
real processes holding real locks; only CUDA's device count is stood in for, as this machine has no GPU."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import torch
from cli import REPO

from experiments import device_slots

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from experiments.device_slots import claim_device
    claim = claim_device(int(sys.argv[1]), Path(sys.argv[2]))
    print(claim.index, flush=True)
    sys.stdin.readline()  # hold the GPU until told to stop
""")


def _start_holder(count: int, folder) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(count), str(folder)], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    return proc, int(proc.stdout.readline())


def test_workers_take_the_least_busy_gpu_and_a_dead_worker_frees_its_own(tmp_path):
    holders = [_start_holder(3, tmp_path) for _ in range(4)]
    try:
        assert [index for _, index in holders] == [0, 1, 2, 0]  # one per GPU, then the least busy again
        holders[1][0].kill()  # killed: no clean-up ran, the kernel dropped its lock
        holders[1][0].wait()
        claim = device_slots.claim_device(3, tmp_path)
        assert claim.index == 1
        assert device_slots.claim_device(3, tmp_path).index in (1, 2)  # unreleased claims are dropped with the object
        claim.release()
        assert device_slots.claim_device(3, tmp_path).index == 1
    finally:
        for proc, _ in holders:
            if proc.poll() is None:
                proc.stdin.close()
                proc.wait(timeout=30)


def test_auto_claims_a_gpu_only_when_several_are_visible(tmp_path, monkeypatch):
    monkeypatch.setenv("DNM_DEVICE_LOCK_DIR", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    first, first_claim = device_slots.training_device("auto")
    second, second_claim = device_slots.training_device("auto")
    assert (first, second) == (torch.device("cuda", 0), torch.device("cuda", 1))
    assert device_slots.training_device("cuda:1") == (torch.device("cuda", 1), None)  # as given, no claim
    first_claim.release()
    again, again_claim = device_slots.training_device("auto")
    assert again == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert device_slots.training_device("auto") == (torch.device("cuda"), None)  # one GPU: nothing to share out
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_slots.training_device("auto") == (torch.device("cpu"), None)
    second_claim.release()
    again_claim.release()
