"""The repository's promises about installing and testing it."""

import configparser
import re

from conftest import REPO_ROOT


def _readme_commands():
    readme = (REPO_ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", quick_start, flags=re.S)


def test_readme_quick_start_is_two_commands_and_ci_runs_the_test_one():
    install_and_train, install_and_test = _readme_commands()
    assert "tfvae train" in install_and_train and "pip install" in install_and_train
    assert "pytest" in install_and_test
    ci_script = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    assert install_and_test in ci_script


def test_setup_cfg_declares_the_console_script_and_extras():
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / "setup.cfg")
    assert "tfvae = tfvae.cli:main" in config["options.entry_points"]["console_scripts"]
    requirements = config["options"]["install_requires"]
    for package in ["tensorflow>=", "tensorflow-probability[tf]", "keras-tuner", "tensorflow-datasets"]:
        assert package in requirements
    assert "tensorflow[and-cuda]" in config["options.extras_require"]["and-cuda"]
    assert "pytest" in config["options.extras_require"]["test"]


def test_ruff_finds_nothing():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--output-format", "concise", str(REPO_ROOT)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
