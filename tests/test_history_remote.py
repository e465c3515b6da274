"""Run history of a notebook on a KFP server (issue 20 item 9): the real ``kfp.Client`` against
the strict KFP API test server (``tests/kfp_server``)."""

from __future__ import annotations

import pytest

from kale_magics import api, cli
from kale_magics.views import history as views
from tests.kfp_server.fixtures import SECRET_TOKEN, kfp_server, token_env  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

LISTED = ("%kale pipeline --name listed-runs --experiment listed-exp",
          "%%kale parameters\nN = 3\nNAMES = ['a']",
          "%%kale step make\nitems = list(range(N))",
          "%%kale step total\nresult = sum(items)",
          "%%kale metrics\nresult")
OTHER = ("%kale pipeline --name other-runs --experiment listed-exp",
         "%%kale step only\nx = 1")


def test_the_servers_runs_of_the_notebooks_pipeline_are_listed(kfp_server, token_env, notebook,  # noqa: F811
                                                               tmp_path, capsys) -> None:
    session = api.connect(kfp_server.url)
    path = notebook(*LISTED, name="listed")
    first = api.submit(path, session, {"N": "4"}, output_dir=str(tmp_path / "a"))
    second = api.submit(path, session, {"NAMES": "['b', 'c']"}, output_dir=str(tmp_path / "a"))
    api.submit(notebook(*OTHER, name="other"), session, output_dir=str(tmp_path / "b"))
    for run in (first, second):  # both ended: the two listings below must agree
        api.watch_remote(session, run.run_id, interval_s=0.2)
    found = api.run_history(path, server=session)
    assert [r.run_id for r in found.runs] == [second.run_id, first.run_id]  # newest first
    assert all(r.where == "kfp" and r.url.endswith(r.run_id) for r in found.runs)
    assert found.runs[1].parameters == {"N": 4, "NAMES": ["a"]}  # lists decoded from KFP's JSON text
    assert found.runs[0].parameters == {"N": 3, "NAMES": ["b", "c"]}
    assert found.runs[0].state == "SUCCEEDED" and found.runs[0].duration_s is not None
    rows = {r.name: r.differs for r in api.compare_runs(*found.runs)}
    assert rows["N"] and rows["NAMES"]
    # metric values from ML Metadata: sum(range(4)) and sum(range(3)), as the notebook computes
    assert [r.metrics for r in found.runs] == [{"result": 3.0}, {"result": 6.0}]
    assert found.notes == ()
    # the CLI lists the same runs
    assert cli.main(["runs", str(path), "--host", kfp_server.url]) == 0
    out = capsys.readouterr().out
    assert out.strip() == views.runs_text(api.run_history(path, server=session)).strip()
    assert second.run_id in out and "result=6.0" in out and SECRET_TOKEN not in out
    # without ML Metadata (the host is the bare API server): listed, no values, one note
    fault = kfp_server.faults.add(path="/ml_metadata.", status=404)
    try:
        bare = api.run_history(path, server=session)
    finally:
        kfp_server.faults.clear()
    assert [r.metrics for r in bare.runs] == [{}, {}] and fault.hits == 1
    assert len(bare.notes) == 1 and "answered HTTP 404" in bare.notes[0]
    assert "(not reported)" in views.runs_text(bare)


def test_a_refused_listing_is_a_note_beside_the_local_runs(kfp_server, token_env,  # noqa: F811
                                                           notebook) -> None:
    session = api.connect(kfp_server.url)
    path = notebook(*LISTED, name="listed")
    api.submit(path, session)
    kfp_server.faults.add(method="GET", path="/runs", status=403, times=1)
    found = api.run_history(path, server=session)
    assert found.runs == () and len(found.notes) == 1
    assert found.notes[0].startswith(f"runs on {kfp_server.url} not listed: ")
    assert "\n" not in found.notes[0] and SECRET_TOKEN not in found.notes[0]
