"""benchmarks/mnist_likelihood.py end to end in its tiny mode: every entry is trained (--train-only
stops there) and scored, the results file holds every figure, and a rerun redoes only what is missing."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT, cli_environment, load_benchmark
from test_data_files import write_idx

from tfvae.presets import PRESET_NAMES

SCRIPT = REPO_ROOT / "benchmarks" / "mnist_likelihood.py"


def run_benchmark(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--tiny", *map(str, args)], env=cli_environment(),
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_tiny_benchmark_scores_every_entry_and_resumes(digits, tmp_path):
    (train_images, _), (test_images, _) = digits
    for folder, name, images in (("train", "train", train_images[:300]), ("test", "t10k", test_images[:60])):
        (tmp_path / folder).mkdir()
        write_idx(tmp_path / folder / f"{name}-images-idx3-ubyte.gz", np.round(images[..., 0] * 255).astype(np.uint8),
                  compress=True)
    out = tmp_path / "results.json"
    data = ["--train-data", tmp_path / "train", "--test-data", tmp_path / "test", "--out", out]

    # --train-only trains every entry and scores none; the next run scores them without training.
    trained = run_benchmark(*data, "--train-only")
    assert trained.returncode == 0, trained.stderr[-3000:]
    after_training = json.loads(out.read_text())["entries"]
    assert all("train" in entry and "test" not in entry for entry in after_training.values())
    first = run_benchmark(*data, "--decode-precision", "float32")
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("train done already, skipped") == len(after_training)
    results = json.loads(out.read_text())
    assert "1234" in results["protocol"]
    entries = results["entries"]
    assert sorted(entries) == sorted([*PRESET_NAMES, "keras-io"])
    for name, entry in entries.items():
        assert entry["settings"]["tiny"] and entry["settings"]["config"]["epochs"] == 1
        assert entry["settings"]["config"]["preset"] == (None if name == "keras-io" else name)
        assert entry["train"]["num_train_examples"] == 250  # the first 5/6 (holdout "last")
        assert entry["train"]["images_per_second"] > 0
        assert entry["parameters"] > 0
        test = entry["test"]
        assert (test["num_examples"], test["num_samples"]) == (60, 20)  # all of the test file
        assert "seed 1234" in test["binarization"] and test["scored"].startswith("all 60 examples")
        # Both figures come from one unrounded time t, each rounded to 0.1: t is within 0.05 s of
        # "seconds", so the rate lies between the decodes over t's two ends (sub-second runs here).
        fastest, slowest = (60 * 20 / (test["seconds"] + sign * 0.05) for sign in (-1, 1))
        assert slowest - 0.05 <= test["decodes_per_second"] <= fastest + 0.05, test
        assert math.isfinite(test["iw_nll"]) and 0 < test["iw_nll"] < -test["elbo"]  # K = 20 tightens the ELBO
        assert 0 <= entry["active_units"]["active_units"] <= entry["active_units"]["latent_dim"]
        subset = entry["subset"]
        assert subset["k50"]["num_examples"] == subset["k20"]["num_examples"] == 20
        assert subset["scored"].startswith("the first 20 of all 60 examples")
        assert subset["gap_nats"] == pytest.approx(subset["k20"]["iw_nll"] - subset["k50"]["iw_nll"])
        assert (tmp_path / "results.models" / name / "model.keras").is_file()
    assert json.loads((tmp_path / "results.models" / "mnist-vae" / "config.json").read_text())["preset"] == "mnist-vae"
    assert entries["mnist-best"]["active_units"]["latent_dim"] == 64
    assert entries["mnist-two-layer"]["active_units"]["latent_dim"] == 80  # D1 + D2 = 40 + 40
    assert entries["keras-io"]["active_units"]["latent_dim"] == 16

    # A rerun redoes only the missing steps: no model is trained again, kept figures stay.
    models = {name: (tmp_path / "results.models" / name / "model.keras").stat().st_mtime_ns for name in entries}
    del entries["mnist-vae"]["subset"], entries["mnist-vae"]["train"], entries["keras-io"]["test"]
    out.write_text(json.dumps(results))
    again = run_benchmark(*data, "--presets", "mnist-vae,keras-io")  # the default: bfloat16 decodes
    assert again.returncode == 0, again.stderr[-3000:]
    assert "keras-io: train done already, skipped" in again.stdout
    assert "mnist-vae: test done already, skipped" in again.stdout
    rerun = json.loads(out.read_text())["entries"]
    assert set(rerun["mnist-vae"]) >= {"train", "subset"} and "test" in rerun["keras-io"]
    assert rerun["mnist-vae"]["train"]["epochs"] == 1  # recorded from the finished run's metrics.json
    assert rerun["mnist-vae"]["test"] == entries["mnist-vae"]["test"]
    assert entries["mnist-best"]["test"]["decode_precision"] == "float32"  # as asked
    # The re-scored subset, decoded in bfloat16, is scored in float32 too: the shift is measured.
    subset = rerun["mnist-vae"]["subset"]
    assert subset["k50"]["decode_precision"] == subset["k20"]["decode_precision"] == "bfloat16"
    assert subset["k20_float32"]["decode_precision"] == "float32"
    assert subset["precision_shift_nats"] == pytest.approx(subset["k20"]["iw_nll"] - subset["k20_float32"]["iw_nll"])
    assert 0 < abs(subset["precision_shift_nats"]) < 0.5
    assert rerun["mnist-best"] == entries["mnist-best"]
    assert {name: (tmp_path / "results.models" / name / "model.keras").stat().st_mtime_ns
            for name in entries} == models

    # The table has a row per entry, every figure filled in.
    table = load_benchmark("mnist_likelihood").markdown_table(rerun)
    assert len(table.splitlines()) == 2 + len(rerun) and "not yet measured" not in table
    assert all(entry["train"]["cpu"] and entry["test"]["cpu"] for entry in rerun.values())

    # A run directory that is gone (a fresh clone of the repository) is trained again.
    shutil.rmtree(tmp_path / "results.models" / "keras-io")
    del rerun["keras-io"]["subset"]
    out.write_text(json.dumps({**results, "entries": rerun}))
    retrained = run_benchmark(*data, "--presets", "keras-io", "--decode-precision", "float32")
    assert retrained.returncode == 0, retrained.stderr[-3000:]
    assert "keras-io: trained before, but" in retrained.stdout
    assert (tmp_path / "results.models" / "keras-io" / "model.keras").is_file()
    assert "subset" in json.loads(out.read_text())["entries"]["keras-io"]

    # Other settings are refused, not mixed into the same file.
    spec = importlib.util.spec_from_file_location("mnist_likelihood", SCRIPT)
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        with pytest.raises(SystemExit, match="made with other settings"):
            module.main([*map(str, data), "--presets", "mnist-vae"])  # not --tiny
    finally:
        sys.path.remove(str(SCRIPT.parent))


def test_the_readme_table_is_the_committed_results(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    module = load_benchmark("mnist_likelihood")
    results = json.loads(module.DEFAULT_OUT.read_text())
    assert module.markdown_table(results["entries"]) in (REPO_ROOT / "README.md").read_text()


def test_results_continue_across_tfvae_versions_that_add_settings_at_their_defaults(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # it imports benchmarks/baselines.py
    module = load_benchmark("mnist_likelihood")
    now = {"config": {"latent_dim": 32, "stochastic_layers": 1}, "samples": 1000}
    stored = {"config": {"latent_dim": 32}, "samples": 1000}  # written before stochastic_layers existed
    assert module.same_settings(stored, now) and module.same_settings(now, now)
    assert not module.same_settings(stored, {**now, "config": {"latent_dim": 32, "stochastic_layers": 2}})
    assert not module.same_settings(stored, {**now, "samples": 5000})
    assert not module.same_settings(stored, {**now, "config": {"latent_dim": 16, "stochastic_layers": 1}})
