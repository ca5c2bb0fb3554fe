"""SIGKILL at random moments, 3 trials (one of each kind; ``make faults`` runs 200): every
resumed surface equals an uninterrupted run bit for bit and no trial leaves an unreadable file
(``scripts/fault_injection.py``)."""

import importlib.util
import os

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "fault_injection.py")


def test_sigkill_at_random_moments(tmp_path):
    spec = importlib.util.spec_from_file_location("fault_injection", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    summary = module.run(trials=3, seed=3, workdir=str(tmp_path))  # kills at 26%, 68% then 41%, 66% of a run
    assert summary["trials"] == 3
    # the kills really landed mid-run
    assert summary["killed_with_partial_surface"] >= 1, summary
