"""glibc keeps freed memory: a training loop stops faulting fresh pages in (feedback_lm/malloc.py)."""
import subprocess
import sys
import textwrap

import pytest

from feedback_lm import malloc

glibc = pytest.mark.skipif(malloc._glibc() is None, reason="needs Linux with glibc")


@glibc
def test_a_training_loop_stops_faulting_pages_in():
    """A small MLP's training steps (~1 MiB activations, freed at the end of each step): with glibc's
    defaults every few steps the freed memory goes back to the kernel and comes back as fresh pages, one
    fault each; kept, the steady state has next to none. In a fresh interpreter each, since the setting is
    process-wide."""
    script = textwrap.dedent("""
        import resource, sys, torch
        from feedback_lm.malloc import keep_freed_memory
        if sys.argv[1] == "keep":
            assert keep_freed_memory()
        torch.manual_seed(0)
        model = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU(),
                                                          torch.nn.Linear(1024, 512)) for _ in range(3)])
        opt = torch.optim.Adam(model.parameters())
        x = torch.randn(512, 512)
        def step():
            model(x).square().mean().backward(); opt.step(); opt.zero_grad()
        for _ in range(10):
            step()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(15):
            step()
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """)

    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    plain, kept = faults("plain"), faults("keep")
    assert plain >= 1000, plain
    assert kept * 10 < plain, (plain, kept)


def test_nothing_changes_without_glibc(monkeypatch):
    monkeypatch.setattr(malloc.sys, "platform", "darwin")
    assert malloc._glibc() is None
    assert malloc.keep_freed_memory() is False
