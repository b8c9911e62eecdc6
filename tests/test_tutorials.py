"""The tutorials: every notebook in tutorials/ runs top to bottom (fast mode); git keeps them clean."""

from __future__ import annotations

import re
import shutil
import socket
from pathlib import Path

import nbformat
import pytest
from conftest import REPO_ROOT, cli_environment
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

TUTORIALS_DIR = REPO_ROOT / "tutorials"
NOTEBOOKS = sorted(TUTORIALS_DIR.glob("*.ipynb"))
#: The environment variable that shrinks epochs and data in every tutorial.
FAST_MODE_VARIABLE = "TFVAE_TUTORIAL_FAST"
#: Where the tutorials write models and exports (default: tutorial-outputs/ beside them).
OUTPUT_DIR_VARIABLE = "TFVAE_TUTORIAL_OUTPUT_DIR"
#: Seconds one cell may take in fast mode before the run fails (a whole notebook takes < 1 min).
CELL_TIMEOUT_SECONDS = 300
#: A committed notebook's outputs (all cells together) may hold at most this many characters.
MAX_COMMITTED_OUTPUT_CHARS = 2_000
#: Tutorials that fall back to local data offline and print "Using <which data>".
NOTEBOOKS_WITH_DATA_FALLBACK = ("01_quickstart", "02_your_own_architecture", "03_tuning_the_latent_size")


def execute_notebook(
    path: Path,
    output_dir: Path,
    timeout: int = CELL_TIMEOUT_SECONDS,
    fast: bool = True,
    extra_environment: dict | None = None,
):
    """Runs a notebook top to bottom with the `python3` kernel, cwd = its folder.

    The kernel imports tfvae from this checkout (PYTHONPATH), not from an installed copy.

    Args:
        path: the .ipynb file.
        output_dir: where the notebook may write files (TFVAE_TUTORIAL_OUTPUT_DIR).
        timeout: seconds per cell.
        fast: run in fast mode (TFVAE_TUTORIAL_FAST=1); False runs the full tutorial.
        extra_environment: more environment variables for the kernel.

    Returns:
        The executed `nbformat.NotebookNode`, with outputs.

    Raises:
        nbclient.exceptions.CellExecutionError: a cell raised; the message names the cell and
            the error.
        nbclient.exceptions.CellTimeoutError: a cell took longer than `timeout`.
    """
    notebook = nbformat.read(path, as_version=4)
    environment = cli_environment({OUTPUT_DIR_VARIABLE: str(output_dir), **(extra_environment or {})})
    environment.pop(FAST_MODE_VARIABLE, None)
    if fast:
        environment[FAST_MODE_VARIABLE] = "1"
    # Pictures are drawn by the inline backend of the kernel; a desktop backend must not leak in.
    environment.pop("MPLBACKEND", None)
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=timeout,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute(env=environment)
    return notebook


def _outputs_of_type(notebook, mime_type: str) -> list:
    return [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if mime_type in output.get("data", {})
    ]


def _stream_text(notebook) -> str:
    return "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.output_type == "stream"
    )


def _linked_notebooks(markdown: str) -> set[str]:
    return set(re.findall(r"\(((?:tutorials/)?\d\d_[a-z_]+\.ipynb)\)", markdown))


# ---------------------------------------------------------------------------- the notebooks run


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_tutorial_runs_top_to_bottom_in_fast_mode(path, tmp_path):
    notebook = execute_notebook(path, tmp_path)

    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code_cells), "a cell did not run"
    errors = [o for cell in code_cells for o in cell.outputs if o.output_type == "error"]
    assert errors == []
    # Every tutorial shows pictures (inline PNGs), not just numbers.
    assert len(_outputs_of_type(notebook, "image/png")) >= 2
    # Files (models, exports) go to the folder the harness gives, not into the repository.
    assert any(tmp_path.iterdir())
    # A notebook whose dataset may be unavailable offline says which data it used.
    if path.stem in NOTEBOOKS_WITH_DATA_FALLBACK:
        assert re.search(r"^Using \S", _stream_text(notebook), re.MULTILINE)


@pytest.mark.slow
def test_quickstart_falls_back_to_builtin_digits_without_local_mnist(tmp_path):
    # A checkout with no ../shared/data beside it, an empty tfds data folder, and no network:
    # tfds fails, the IDX files are missing, so the quick start must train on the built-in
    # digits and say so. "No network" holds on any machine: tfvae.data's network probe connects
    # to the HTTPS proxy when one is set, and here the proxy is a port on 127.0.0.1 that is
    # bound but not listening, so every connection to it is refused at once.
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO_ROOT / "tfvae", checkout / "tfvae",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "setup.cfg", checkout / "setup.cfg")
    (checkout / "tutorials").mkdir()
    quickstart = shutil.copy(TUTORIALS_DIR / "01_quickstart.ipynb", checkout / "tutorials")
    assert not (tmp_path / "shared").exists()

    with socket.socket() as refusing_port:
        refusing_port.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{refusing_port.getsockname()[1]}"
        offline = {"TFDS_DATA_DIR": str(tmp_path), "HTTPS_PROXY": proxy, "https_proxy": proxy}
        notebook = execute_notebook(Path(quickstart), tmp_path / "outputs", extra_environment=offline)

    text = _stream_text(notebook)
    assert "there is no network to download it" in text
    assert "Using scikit-learn's built-in 8x8 digits" in text
    assert "image shape (8, 8, 1)" in text
    assert (tmp_path / "outputs" / "quickstart.keras").is_file()


@pytest.mark.slow
def test_a_failing_cell_fails_the_run(tmp_path):
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("import os\nfast = os.environ['TFVAE_TUTORIAL_FAST']"),
            nbformat.v4.new_code_cell("raise ValueError(f'broken tutorial, fast={fast}')"),
            nbformat.v4.new_code_cell("print('never reached')"),
        ]
    )
    path = tmp_path / "broken.ipynb"
    nbformat.write(notebook, path)

    with pytest.raises(CellExecutionError, match=r"broken tutorial, fast=1"):
        execute_notebook(path, tmp_path, timeout=60)


# ---------------------------------------------------------------------------- what git holds


def test_every_expected_tutorial_is_there():
    names = [path.name for path in NOTEBOOKS]
    for expected in ("01_quickstart.ipynb", "02_your_own_architecture.ipynb",
                     "03_tuning_the_latent_size.ipynb", "04_distributed_training.ipynb",
                     "05_export_and_serve.ipynb", "06_conditional_generation.ipynb"):
        assert expected in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_committed_notebook_is_valid_and_has_no_large_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    first = notebook.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")

    output_chars = sum(
        len(nbformat.writes(nbformat.from_dict({"outputs": cell.get("outputs", [])})))
        for cell in notebook.cells
        if cell.cell_type == "code"
    )
    assert output_chars <= MAX_COMMITTED_OUTPUT_CHARS, (
        f"{path.name} holds {output_chars} characters of outputs; strip them before committing "
        "(jupyter nbconvert --clear-output --inplace)."
    )
    assert _outputs_of_type(notebook, "image/png") == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_honours_fast_mode_and_links_existing_tutorials(path):
    notebook = nbformat.read(path, as_version=4)
    code = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    markdown = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")

    assert f'os.environ.get("{FAST_MODE_VARIABLE}")' in code
    for linked in _linked_notebooks(markdown):
        assert (TUTORIALS_DIR / Path(linked).name).is_file(), f"{path.name} links {linked}"


def test_distributed_tutorial_creates_its_strategy_before_anything_else():
    # Logical CPU devices can be split off only before TensorFlow initializes its devices, so the
    # first code cell must create the strategy, with nothing before it that could touch TF.
    notebook = nbformat.read(TUTORIALS_DIR / "04_distributed_training.ipynb", as_version=4)
    first_code = next(cell for cell in notebook.cells if cell.cell_type == "code").source
    statements = [line for line in first_code.splitlines() if line and not line.startswith("#")]
    creation = 'distribute.get_strategy("mirrored", num_cpu_devices=2)'
    before = statements[: next(i for i, line in enumerate(statements) if creation in line)]
    allowed = ("%matplotlib inline", "import logging", "import os", "from tfvae import distribute",
               'logging.getLogger("tensorflow")')
    assert all(line.startswith(allowed) for line in before), before


def test_readmes_list_every_tutorial():
    tutorials_readme = (TUTORIALS_DIR / "README.md").read_text()
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("\n## Tutorials\n", 1)[1].split("\n## ", 1)[0]

    names = {path.name for path in NOTEBOOKS}
    assert {Path(link).name for link in _linked_notebooks(tutorials_readme)} == names
    assert _linked_notebooks(section) == {f"tutorials/{name}" for name in names}
