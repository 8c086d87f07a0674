"""Progress: live bars in a terminal, a readable line per tenth of the work in a log file."""

from __future__ import annotations

import io

from harmonizing_flows.progress import LineProgress, progress_bar


def test_a_log_gets_a_line_per_tenth_and_no_carriage_returns():
    stream = io.StringIO()
    bar = LineProgress(total=200, desc="flow", unit="step", stream=stream)
    for _ in range(200):
        bar.set_postfix({"bpd": "3.1"})
        bar.update()
    bar.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert len(lines) == 10  # 20, 40, ... 180, then the end
    assert lines[0].startswith("flow: 20/200 step (10 %)") and lines[0].endswith("bpd 3.1")
    assert lines[-1].startswith("flow: 200/200 step (100 %)")


def test_iterating_and_resuming_part_way():
    stream = io.StringIO()
    assert list(LineProgress(range(5), desc="reading", stream=stream)) == [0, 1, 2, 3, 4]
    assert stream.getvalue().splitlines()[-1].startswith("reading: 5/5 it")
    stream = io.StringIO()
    bar = LineProgress(total=100, initial=50, desc="flow", stream=stream)
    bar.update(10)
    assert stream.getvalue().startswith("flow: 60/100")


def test_outside_a_terminal_the_bar_is_a_line_printer(capsys):
    # pytest's captured stderr is not a terminal, as a log file is not
    bar = progress_bar(total=10, desc="adapting", enabled=True)
    assert isinstance(bar, LineProgress)
    for _ in range(10):
        bar.update()
    bar.close()
    assert "adapting: 10/10" in capsys.readouterr().err
    quiet = progress_bar(total=10, enabled=False)
    quiet.update()
    quiet.close()
    assert capsys.readouterr().err == ""
