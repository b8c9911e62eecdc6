"""`tfvae train` run directories, config files, resume after a kill, `evaluate` and `sample`."""

import csv
import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import yaml
from conftest import cli_environment, run_cli, run_main

from tfvae.cli import main


def _png(path):
    return tf.io.decode_png(path.read_bytes()).numpy()


@pytest.fixture(scope="module")
def latent_2d_run(tmp_path_factory):
    """A short run with a 2-D latent space (so every picture is drawn)."""
    run_dir = tmp_path_factory.mktemp("runs") / "two_d"
    status = main(["train", "--latent-dim", "2", "--epochs", "3", "--run-dir", str(run_dir), "--quiet"])
    assert status == 0
    return run_dir


def test_run_directory_holds_everything(latent_2d_run):
    names = {p.relative_to(latent_2d_run).as_posix() for p in latent_2d_run.rglob("*") if p.is_file()}
    for expected in ["config.json", "model.keras", "checkpoints/best.keras", "metrics.csv", "metrics.json",
                     "samples.png", "reconstructions.png", "interpolations.png", "loss_curves.png",
                     "latent_manifold.png", "latent_scatter.png", "kl_per_dimension.png"]:
        assert expected in names
    for log in ["logs/train", "logs/validation", "logs/images"]:
        assert any(name.startswith(log + "/events.out.tfevents") for name in names), log
    assert not (latent_2d_run / "backup").exists()  # removed when the run finished
    assert not any(".tmp" in name for name in names)
    with (latent_2d_run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["0", "1", "2"]
    assert {"loss", "elbo", "kl", "reconstruction", "val_loss", "val_elbo"} <= set(rows[0])
    metrics = json.loads((latent_2d_run / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 3
    assert metrics["best_val_loss"] == pytest.approx(min(float(r["val_loss"]) for r in rows))
    diagnostics = metrics["diagnostics"]  # of the validation split, by tfvae.diagnostics
    assert diagnostics["num_examples"] == 180 and 0 <= diagnostics["active_units"] <= 2
    assert len(diagnostics["kl_per_dimension"]) == 2
    assert sum(diagnostics["kl_per_dimension"]) == pytest.approx(diagnostics["kl"], rel=1e-6)
    assert 0 <= diagnostics["mutual_information"] <= diagnostics["mutual_information_max"]


def test_pictures_have_the_expected_size_and_are_not_blank(latent_2d_run):
    # 8x8 digits are drawn 8x larger; grids have 2-pixel gaps (the manifold none).
    expected = {
        "samples.png": (8 * 66 + 2, 8 * 66 + 2),
        "reconstructions.png": (8 * 66 + 2, 8 * 66 + 2),
        "interpolations.png": (8 * 66 + 2, 10 * 66 + 2),
        "latent_manifold.png": (15 * 64, 15 * 64),
    }
    for name, size in expected.items():
        pixels = _png(latent_2d_run / name)
        assert pixels.shape[:2] == size, name
        assert pixels.std() > 5, name
    for chart in ["loss_curves.png", "latent_scatter.png", "kl_per_dimension.png"]:
        pixels = _png(latent_2d_run / chart)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 300 and pixels.std() > 5


def test_tensorboard_images_are_logged_each_epoch(latent_2d_run):
    (event_file,) = (latent_2d_run / "logs" / "images").iterdir()
    steps = {}
    for event in tf.compat.v1.train.summary_iterator(str(event_file)):
        for value in event.summary.value:
            steps.setdefault(value.tag, set()).add(event.step)
    assert steps == {"samples": {0, 1, 2}, "reconstructions": {0, 1, 2}}


def test_evaluate_prints_json_for_scripts(latent_2d_run, capsys):
    status, out, _ = run_main(capsys, "evaluate", latent_2d_run, "--samples", "50", "--json")
    assert status == 0
    result = json.loads(out)
    assert set(result) == {
        "run_dir", "checkpoint", "dataset", "source", "split", "scored", "binarization", "elbo", "iw_nll",
        "num_samples", "num_examples", "data", "decode_precision", "bits_per_dim_unavailable",
        "active_units", "active_unit_threshold", "latent_dim", "kl_per_dimension",
        "mutual_information", "mutual_information_max", "mutual_information_examples",
    }
    assert result["source"] == "built-in 'digits'" and result["split"] == "held-out"
    # A Bernoulli on the gray digits (levels k / 16): no probability of the data, no bits/dim.
    assert result["data"] == "continuous"
    assert result["bits_per_dim_unavailable"].startswith("No bits/dim: the BernoulliLikelihood scores continuous data")
    assert result["num_samples"] == 50 and result["num_examples"] == 180  # 10% of the 1,797 digits
    assert 0 <= result["active_units"] <= result["latent_dim"] == len(result["kl_per_dimension"]) == 2
    assert result["mutual_information_examples"] == 180
    assert 0 <= result["mutual_information"] <= result["mutual_information_max"] == pytest.approx(np.log(180))
    assert 0 < result["iw_nll"] <= -result["elbo"] + 0.5
    assert result["decode_precision"] == "float32"


def test_evaluate_decodes_in_bfloat16_on_request(latent_2d_run, capsys):
    arguments = ["evaluate", latent_2d_run, "--samples", "20", "--max-examples", "40", "--json"]
    _, out, _ = run_main(capsys, *arguments)
    status, out_bfloat16, _ = run_main(capsys, *arguments, "--decode-precision", "bfloat16")
    assert status == 0
    full, half = json.loads(out), json.loads(out_bfloat16)
    assert (full["decode_precision"], half["decode_precision"]) == ("float32", "bfloat16")
    # The same importance samples, decoded at another precision: close, not equal.
    assert half["iw_nll"] != full["iw_nll"] and half["iw_nll"] == pytest.approx(full["iw_nll"], abs=0.05)


def test_evaluate_prints_a_table(latent_2d_run, capsys):
    status, out, err = run_main(capsys, "evaluate", latent_2d_run, "--samples", "5", "--max-examples", "20", "--checkpoint", "best")
    assert status == 0
    assert "IW NLL, K=5 (nats/image)" in out and "examples" in out and " 20\n" in out
    assert re.search(r"decode precision +float32\n", out)
    # The cost, before the progress bar: examples x K decodes and the time it should take.
    assert re.match(r"Scoring 20 examples x K=5 importance samples = 100 decodes: about \d+ s on this machine\.\n",
                    err), err
    assert "active units (Cov > 0.01)" in out and " of 2\n" in out and "KL per dimension (nats)" in out
    assert "I(x; z) under q, N=20 (nats, <= log N = 3.00)" in out


@pytest.mark.parametrize(
    "args, message, first_line",
    [
        (["--samples", "6000"], "Expected --samples <= 5000. Received: 6000", "tfvae: error:"),
        (["--dataset", "/no/such/file.npz"], "/no/such/file.npz", "tfvae: error:"),
        # A flag error: the short usage line, then argparse's error (README, The command line).
        (["--decode-precision", "float16"], "argument --decode-precision: invalid choice: 'float16'",
         "usage: tfvae evaluate"),
    ],
)
def test_evaluate_bad_input(latent_2d_run, capsys, args, message, first_line):
    status, _, err = run_main(capsys, "evaluate", latent_2d_run, *args)
    assert status == 2 and message in err and err.startswith(first_line)


def test_commands_refuse_a_directory_that_is_not_a_run(tmp_path, capsys):
    for command in (["evaluate"], ["sample", "--out", str(tmp_path / "s.png")]):
        status, _, err = run_main(capsys, *command, tmp_path)
        assert status == 2 and "Expected a tfvae run directory" in err


def test_sample_grids(latent_2d_run, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert run_main(capsys, "sample", latent_2d_run, "-n", "16", "--out", out)[0] == 0
    assert _png(out).shape[:2] == (4 * 66 + 2, 4 * 66 + 2)
    status, _, err = run_main(capsys, "sample", latent_2d_run, "--out", out)
    assert status == 2 and "which exists (pass --overwrite" in err
    assert run_main(capsys, "sample", latent_2d_run, "--out", out, "--overwrite", "-n", "4")[0] == 0
    assert _png(out).shape[:2] == (2 * 66 + 2, 2 * 66 + 2)

    lines = tmp_path / "lines.png"
    assert run_main(capsys, "sample", latent_2d_run, "--interpolate", "-n", "24", "--steps", "6", "--out", lines)[0] == 0
    assert _png(lines).shape[:2] == (4 * 66 + 2, 6 * 66 + 2)
    traverse = tmp_path / "traverse.png"
    assert run_main(capsys, "sample", latent_2d_run, "--traverse", "1", "-n", "16", "--out", traverse)[0] == 0
    pixels = _png(traverse)
    assert pixels.shape[:2] == (2 * 66 + 2, 8 * 66 + 2)
    # Along a traversal the image changes from one end to the other.
    first, last = pixels[2:66, 2:66], pixels[2:66, -66:-2]
    assert np.abs(first.astype(int) - last.astype(int)).mean() > 1
    status, _, err = run_main(capsys, "sample", latent_2d_run, "--traverse", "2", "--out", tmp_path / "t.png")
    assert status == 2 and "Expected a latent dimension in [0, 2). Received: 2" in err


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_file_with_flags_overriding_it(tmp_path, capsys, suffix):
    settings = {"latent_dim": 3, "epochs": 5, "filters": [8], "hidden-units": 16, "seed": 4}
    path = tmp_path / f"settings{suffix}"
    path.write_text(json.dumps(settings) if suffix == ".json" else yaml.safe_dump(settings))
    run_dir = tmp_path / "run"
    status, _, err = run_main(capsys, "train", "--config", path, "--epochs", "1", "--run-dir", run_dir, "--quiet")
    assert status == 0, err
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["latent_dim"] == 3 and saved["filters"] == [8] and saved["hidden_units"] == 16
    assert saved["epochs"] == 1  # the typed flag wins over the file
    assert saved["dataset"] == "digits" and saved["run_dir"] == str(run_dir)
    # The saved config is itself a valid --config file that reproduces the settings.
    again = tmp_path / "again"
    status, _, _ = run_main(capsys, "train", "--config", run_dir / "config.json", "--run-dir", again, "--quiet")
    assert status == 0
    assert json.loads((again / "config.json").read_text()) == {**saved, "run_dir": str(again)}


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"latent_dims": 3}', "Unknown setting(s) ['latent_dims']"),
        ("[1, 2]", "to hold a mapping of settings. Received: list"),
        ("{not json", "Could not parse the config file"),
        ('{"epochs": 0}', "Expected epochs to be an integer >= 1. Received: epochs=0"),
    ],
)
def test_bad_config_files(tmp_path, capsys, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    status, _, err = run_main(capsys, "train", "--config", path, "--run-dir", tmp_path / "run")
    assert status == 2 and message in err
    assert not (tmp_path / "run").exists()


def test_resume_refuses_other_settings_and_extends_a_finished_run(latent_2d_run, tmp_path, capsys):
    status, _, err = run_main(capsys, "train", "--resume", latent_2d_run, "--latent-dim", "4")
    assert status == 2 and "Expected only ['epochs', 'jit_compile', 'mixed_precision', 'strategy'] to change when resuming" in err
    status, _, err = run_main(capsys, "train", "--resume", tmp_path)
    assert status == 2 and "Expected a tfvae run directory with config.json" in err


@pytest.mark.slow
def test_extending_a_finished_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run_main(capsys, "train", "--epochs", "2", "--run-dir", run_dir, "--quiet")[0] == 0
    assert run_main(capsys, "train", "--resume", run_dir, "--epochs", "4", "--quiet")[0] == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 4 and metrics["epochs_run_this_session"] == 2
    assert json.loads((run_dir / "config.json").read_text())["epochs"] == 4


def _csv_rows(path):
    if not path.exists():
        return 0
    with path.open() as handle:
        return len(list(csv.DictReader(handle)))


@pytest.mark.slow
def test_resume_after_sigkill_finishes_the_requested_epochs(tmp_path):
    run_dir = tmp_path / "run"
    epochs = 12
    process = subprocess.Popen(
        [sys.executable, "-m", "tfvae", "train", "--epochs", str(epochs), "--run-dir", str(run_dir), "--quiet",
         "--filters", "64,128", "--hidden-units", "256", "--batch-size", "64"],
        env=cli_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while _csv_rows(run_dir / "metrics.csv") < 3 and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "training ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_after = _csv_rows(run_dir / "metrics.csv")
    assert 3 <= killed_after < epochs
    assert (run_dir / "backup" / "training_metadata.json").exists()
    # Every file left by the killed process is complete: the model loads, the JSON parses.
    json.loads((run_dir / "config.json").read_text())

    result = run_cli("train", "--resume", run_dir, "--quiet", timeout=600)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_completed"] == epochs
    assert metrics["epochs_run_this_session"] <= epochs - killed_after + 1
    with (run_dir / "metrics.csv").open() as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == list(range(epochs))
    assert not (run_dir / "backup").exists()
    import keras

    model = keras.models.load_model(run_dir / "model.keras")
    assert model.optimizer.iterations.numpy() == epochs * int(np.ceil(metrics["num_train_examples"] / 64))
