"""The one progress display: a no-op when off, a rich bar on a terminal, a final line in a log."""

from __future__ import annotations

import io

from rich.console import Console

from flm.progress import Bar, progress_bar


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=120, color_system=None), out


def test_off_bars_do_nothing():
    console, out = _console(True)
    with progress_bar("x", 3, enabled=False, console=console) as bar:
        bar.advance()
        bar.update(completed=2, description="y", info="z")
        bar.add("next", 4).advance(2)
        assert bar.start(10) is not None and not bar.shown
    assert out.getvalue() == ""


def test_transient_bars_show_only_on_a_terminal():
    console, out = _console(False)
    with progress_bar("x", 3, console=console) as bar:
        bar.advance(3)
    assert not bar.shown and out.getvalue() == ""
    console, out = _console(True)
    with progress_bar("growing", console=console, unit="bytes") as bar:
        advance = bar.start(2000)
        advance(1000)
    assert bar.shown and "growing" in out.getvalue()


def test_a_lasting_bar_leaves_its_final_state_in_a_log():
    console, out = _console(False)
    with progress_bar("train", 10, completed=4, transient=False, console=console) as bar:
        bar.update(completed=10, description="train loss 1.234")
        second = bar.add("tokenizing", 5)
        second.update(completed=5, info="train 0.01M tokens")
    text = out.getvalue()
    assert "train loss 1.234" in text and "10/10" in text
    assert "tokenizing" in text and "5/5" in text and "train 0.01M tokens" in text


def test_a_bar_is_plain_to_use_when_off():
    bar = Bar()
    bar.advance()
    bar.update(total=3)
    assert not bar.add("x").shown


def test_a_log_gets_a_line_per_interval_not_per_update(monkeypatch):
    monkeypatch.setenv("FLM_PROGRESS_SECONDS", "1000")
    console, out = _console(False)
    with progress_bar("step", 100, transient=False, console=console) as bar:
        for i in range(1, 51):
            bar.update(completed=i, description="loss 2.000", info="9 tok/s")
    assert out.getvalue().splitlines() == [out.getvalue().strip()]  # only the final line
    assert out.getvalue().startswith("step 50/100 loss 2.000 9 tok/s | 0:00:00 elapsed, ETA ")
    monkeypatch.setenv("FLM_PROGRESS_SECONDS", "0")
    console, out = _console(False)
    with progress_bar("step", 3, transient=False, console=console) as bar:
        for i in range(1, 4):
            bar.update(completed=i)
    assert [line.split(" |")[0] for line in out.getvalue().splitlines()] == ["step 1/3", "step 2/3", "step 3/3"]
