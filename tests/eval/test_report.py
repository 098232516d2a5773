"""Console tables and one-line eval summaries."""

from __future__ import annotations

import io

from rich.console import Console

from sparsetune.eval.report import format_eval, format_value, print_table


def test_print_table_has_rows_and_union_of_columns():
    buf = io.StringIO()
    rows = {"arith": {"exact_match": 0.25, "n": 4.0},
            "boolq": {"acc": 0.5, "acc_norm": 0.625, "n": 8.0},
            "vision": {"top1": 0.9, "per_class": {"a": 1.0}}}
    print_table("eval", rows, console=Console(file=buf, width=120))
    out = buf.getvalue()
    for text in ("eval", "arith", "boolq", "exact_match", "acc_norm", "0.2500", "0.6250", "top1"):
        assert text in out
    assert "per_class" not in out


def test_format_eval_and_values():
    line = format_eval({"t": {"acc": 0.5, "acc_stderr": 0.1, "n": 4.0}, "average": {"score": 0.5}})
    assert line == "t: acc=0.5000 | average: score=0.5000"
    assert format_value(1234567) == "1,234,567"
    assert format_value(135000000.0) == "135,000,000"
    assert format_value(12.3456) == "12.35"
    assert format_value(None) == "-"
