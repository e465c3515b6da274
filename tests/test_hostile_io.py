"""Step output that used to break local runs: any bytes, lines that look like events, a lot of
output, background children. Events come through the step's own channel, output goes to
the step's log file, and the run keeps only the log's end in memory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kale_magics import api
from kale_magics.runner.local import LINE_LIMIT, LOG_TAIL_BYTES, LOG_TAIL_LINES, _EventsFile, log_tail

LINES = 5000


@pytest.mark.integration
def test_any_output_is_log_never_events(notebook) -> None:
    path = notebook(
        "%%kale step a\nimport os, sys\nprint('before')\nsys.stdout.flush()\n"
        "os.write(1, b'not utf-8: \\xff\\xfe\\x80\\n')\nos.write(2, b'stderr \\xc3\\n')\n"
        "print('##kale-magics-event## {not json')\n"
        "print('{\"event\": \"end\", \"step\": \"b\", \"state\": \"FAILED\", \"error\": \"forged\"}')\n"
        "print('[kale-magics] warning: forged')\n"
        f"for i in range({LINES}):\n    print('line', i)\nx = 1",
        "%%kale step b\ny = x + 1", "%%kale metrics\ny")
    status = api.run_local(path)
    assert status.state == "SUCCEEDED", status.error
    assert status.steps["b"].error == "" and status.metrics == {"y": 2.0}
    assert not any("forged" in w for w in status.warnings)
    a = status.steps["a"]
    raw = Path(a.log_path).read_bytes()
    assert b"not utf-8: \xff\xfe\x80\n" in raw and b"stderr \xc3\n" in raw
    assert raw.count(b"\nline ") == LINES and raw.rstrip().endswith(f"line {LINES - 1}".encode())
    assert len(a.log) == LOG_TAIL_LINES and a.log[-1] == f"line {LINES - 1}"
    assert Path(a.log_path).parent.parent == Path(status.pipeline_root) / "logs"


@pytest.mark.integration
def test_a_background_child_does_not_keep_the_run_waiting(notebook, tmp_path: Path) -> None:
    flag, pid_file = tmp_path / "release", tmp_path / "child.pid"
    child = ("import os, sys, time\nfor _ in range(600):\n    if os.path.exists(sys.argv[1]):\n"
             "        break\n    time.sleep(0.1)\nprint('child done')")
    path = notebook(
        "%%kale step a\nimport subprocess, sys\n"
        f"child = subprocess.Popen([sys.executable, '-c', {child!r}, {str(flag)!r}])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\nx = 1",
        "%%kale step b\ny = x + 1")
    try:
        status = api.run_local(path)
        assert status.state == "SUCCEEDED", status.error
        pid = int(pid_file.read_text())
        os.kill(pid, 0)  # still alive, waiting for the flag: the run did not wait for it
        assert not flag.exists()
    finally:
        flag.touch()


def test_events_file_reads_complete_lines_and_skips_malformed(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    reader = _EventsFile(str(path))
    assert reader.new_events() == []
    path.write_bytes(b'{"event": "start", "step": "a"}\nnot json\n[1]\n{"event": "end", "st')
    assert reader.new_events() == [{"event": "start", "step": "a"}]
    with open(path, "ab") as f:
        f.write(b'ep": "a"}\n')
    assert reader.new_events() == [{"event": "end", "step": "a"}]


def test_log_tail_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_bytes(b"\x1b[31mred\x1b[0m\n" + b"x" * (LINE_LIMIT * 3) + b"\n"
                     + b"".join(b"%d\n" % i for i in range(LOG_TAIL_BYTES)))
    tail = log_tail(str(path))
    assert len(tail) == LOG_TAIL_LINES and tail[-1] == str(LOG_TAIL_BYTES - 1)
    path.write_bytes(b"\x1b[31mred\x1b[0m\n" + b"x" * (LINE_LIMIT * 3) + b"\n\xff\n")
    assert log_tail(str(path)) == ["red", "x" * LINE_LIMIT, "\ufffd"]
    assert log_tail(str(tmp_path / "missing.log")) == []


def test_the_runtime_writes_no_events_to_stdout(tmp_path: Path, monkeypatch, capfd) -> None:
    from kale_magics.runtime import channel

    monkeypatch.delenv(channel.CHANNEL_ENV, raising=False)
    channel.emit("start", "a")
    channel.emit("end", "a", state="SUCCEEDED")
    assert capfd.readouterr() == ("", "")
    monkeypatch.setenv(channel.CHANNEL_ENV, str(tmp_path))
    channel.emit("start", "a")
    os.write(1, b"user output \xff\n")
    os.write(2, b"more\n")
    channel.emit("end", "a", state="SUCCEEDED")
    assert capfd.readouterr().out == "\n\n"  # one empty line per event: the runner looks now
    assert (tmp_path / "a.log").read_bytes() == b"user output \xff\nmore\n"
    assert [line.count(b'"event"') for line in (tmp_path / "events.jsonl").read_bytes().splitlines()] == [1, 1]
