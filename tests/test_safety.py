"""Safety: the user's notebook is never modified; a token never shows up in what we produce."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from kale_magics import api, cli
from tests.conftest import EXAMPLES
from tests.kfp_server.fixtures import SECRET_TOKEN, kfp_server  # noqa: F401

pytestmark = pytest.mark.integration


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def wine(tmp_path: Path) -> Path:
    path = tmp_path / "wine.ipynb"
    shutil.copy(EXAMPLES / "wine.ipynb", path)
    return path


def test_cli_commands_never_modify_the_notebook(wine, tmp_path, capsys) -> None:
    before = digest(wine)
    for argv in (["show", str(wine)], ["compile", str(wine)],
                 ["run", str(wine), "--param", "N_ESTIMATORS=10", "--json"],
                 ["convert", str(wine), "--to", "kale-tags", "-o", str(tmp_path / "t.ipynb")]):
        assert cli.main(argv) == 0, argv
        assert digest(wine) == before, argv
    capsys.readouterr()


def test_magic_actions_never_modify_the_notebook(wine, tmp_path) -> None:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "kale_magics")
    before = digest(wine)
    import nbformat

    for cell in nbformat.read(wine, as_version=4).cells:
        if cell.cell_type == "code":
            shell.run_cell(cell.source)
            assert digest(wine) == before
    with capture_output():
        for action in ("show", "check", "compile", "run --param N_ESTIMATORS=10", "status",
                       f"export --kale-tags {tmp_path / 'tags.ipynb'}"):
            shell.run_line_magic("kale", f"{action.split()[0]} --notebook {wine} "
                                         f"{' '.join(action.split()[1:])}")
            assert digest(wine) == before, action


def test_token_never_in_status_model_or_outputs(kfp_server, wine, tmp_path, monkeypatch,  # noqa: F811
                                                capsys) -> None:
    monkeypatch.setenv("KALE_MAGICS_CONFIG", str(tmp_path / "none.json"))
    session = api.connect(kfp_server.url, token=SECRET_TOKEN)
    compiled = api.compile_notebook(wine, str(tmp_path / "out"))
    submission = api.submit(compiled, session, {"N_ESTIMATORS": "10"})
    status = api.watch_remote(session, submission.run_id, plan=compiled.plan, interval_s=0.3)
    assert status.state == "SUCCEEDED"
    produced = [json.dumps(status.to_json(), default=str), repr(status), repr(submission),
                *(p.read_text(errors="replace") for p in (tmp_path / "out").iterdir()),
                wine.read_text(), *capsys.readouterr()]
    assert all(SECRET_TOKEN not in text for text in produced)
