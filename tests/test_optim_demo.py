"""CLI smoke test of ``searchlab demo`` (ARCHITECTURE.md, rule 12: a smoke run per command)."""

from __future__ import annotations

import re

import searchlab.cli


def test_demo_runs_and_trains_powersign(capsys):
    code = searchlab.cli.main(["demo"])
    out = capsys.readouterr().out
    assert code == 0
    assert "PowerSign" in out and "SGD" in out
    assert "exp(sign(g)*sign(m))*g" in out
    assert "g m sign sign mul o1 g exp id mul" in out  # PowerSign's token form
    assert "losses identical: True" in out
    # every optimizer's loss went down over training
    rows = [line.split() for line in out.splitlines()
            if re.match(r"\s+(PowerSign|AddSign|SGD)\b.*\d+\.\d{4}", line)]
    assert len(rows) == 4
    for row in rows:
        losses = [float(x) for x in row if re.fullmatch(r"\d+\.\d{4}", x)]
        assert losses[-1] < losses[0]
