"""benchmarks/objectives.py end to end in its --tiny mode (a smoke test; the figures mean nothing)."""

import json
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, cli_environment, load_benchmark

DATA_DIR = REPO_ROOT.parent / "shared" / "data"
CONFIGURATIONS = ["elbo", "elbo_warmup", "free_bits", "iwae_k5_standard", "iwae_k5_dreg",
                  "iwae_k50_standard", "iwae_k50_dreg"]


def run_benchmark(out, data_dir=DATA_DIR):
    """Runs `benchmarks/objectives.py --tiny` in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "objectives.py"), "--tiny", "--data-dir", str(data_dir),
         "--out", str(out)],
        env=cli_environment(), capture_output=True, text=True, timeout=600,
    )


@pytest.mark.slow
@pytest.mark.skipif(not (DATA_DIR / "mnist-train").is_dir(), reason=f"MNIST is not at {DATA_DIR}")
def test_tiny_benchmark_runs_every_configuration_and_resumes(tmp_path, capsys):
    out = tmp_path / "objectives.json"
    completed = run_benchmark(out)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(out.read_text())
    assert sorted(results["configurations"]) == sorted(CONFIGURATIONS)
    assert results["settings"]["test_binarization_seed"] == 1234 and results["settings"]["tiny"] is True
    for name, entry in results["configurations"].items():
        assert entry["steps"] >= 2 and entry["seconds_per_epoch"] > 0, name
        assert 0 < entry["iw_nll"] < 1000 and entry["elbo"] < 0, name
        # The importance-weighted estimate is at least as tight as the ELBO, up to noise.
        assert entry["iw_nll"] < -entry["elbo"] + 1.0, name
        assert 0 <= entry["active_units"] <= results["settings"]["latent_dim"], name
    assert "| iwae_k50_dreg |" in completed.stdout
    # The equal-epoch comparison ran: it scored every configuration at the largest epoch all of
    # them reached (none when a slow machine let some configuration finish no epoch).
    equal = results["equal_epochs"]
    if equal["epochs"] is not None:
        assert sorted(equal["scores"]) == sorted(CONFIGURATIONS), equal
    # Run again (in this process: a second start of TensorFlow would add seconds, not checks):
    # every configuration is in the file, none is trained again.
    assert load_benchmark("objectives").main(
        ["--tiny", "--data-dir", str(DATA_DIR), "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("already in") == len(CONFIGURATIONS)
    assert json.loads(out.read_text()) == results
