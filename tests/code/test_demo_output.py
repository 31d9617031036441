"""The demo's terminal story fits one screenful and carries the key numbers; noise goes to the log."""

from __future__ import annotations

import os
import subprocess
import sys

from pipelines.demo_output import MAX_LINES, quiet_terminal, summary_lines


def big_summary(n_dates: int = 60) -> dict:
    mon = [{"date": f"2024-03-{i % 28 + 1:02d}", "drift_share": 0.01 * i,
            "action": "retrain" if i in (20, 45) else "none", "explanation": "retrain: drift on 2 dates " * 5}
           for i in range(n_dates)]
    return {"steps_seconds": {f"{i}. a step with a long title " * 3: 12.345 * i for i in range(8)},
            "scores": {m: {"vol_qlike": 0.312345, "ret_ic": 0.0123456, "ret_coverage": 0.8, "rv_coverage": 0.79,
                           "rv_ece": 0.0234} for m in ("v1 lstm", "v2 tcn", "har_rv", "ewma", "persistence", "zero")},
            "notes": ["v1 lstm: return confidence is 0.50 everywhere: the model showed no validated return skill, "
                      "so it claims none."],
            "monitoring": mon, "retrainings": ["2024-03-21", "2024-03-18"], "champion_before": "1",
            "champion_after": "3", "serving": {"v1_status": 200, "v2_status": 200, "bad_request_status": 400},
            "champion_kind": "volatility: ensemble of lstm (w 0.8), transformer (w 0.8); return: zero (no validated skill)",
            "seconds": 301.2, "index": "/x/report/index.html", "mlflow_uri": "sqlite:////x/mlflow.db"}


def test_story_fits_a_screen_and_holds_the_numbers():
    lines = summary_lines(big_summary(), "/x/demo.log")
    assert len(lines) < MAX_LINES
    text = "\n".join(lines)
    assert "0.312" in text and "0.0123" in text  # QLIKE and IC, rounded
    assert "0.312345" not in text
    assert "claims none" in text
    assert "served by v3: volatility: ensemble of lstm" in text  # the champion names its kind
    assert sum("retrain" in ln and "drift" in ln for ln in lines) >= 2  # both retrainings kept
    assert lines[-1] == "full log: /x/demo.log"
    assert "report: /x/report/index.html" in lines
    assert all(len(ln) <= 120 for ln in lines)


def test_even_an_absurd_summary_is_cut_to_a_screen():
    s = big_summary(500)
    s["notes"] = ["a note"] * 200
    assert len(summary_lines(s, "/x/demo.log")) <= MAX_LINES


def test_quiet_terminal_sends_subprocess_and_logging_output_to_the_log(tmp_path, capfd):
    import logging

    log = tmp_path / "demo.log"
    with quiet_terminal(log) as terminal:
        subprocess.run([sys.executable, "-c", "import sys; print('kfp noise'); print('warn', file=sys.stderr)"],
                       check=True)
        logging.getLogger("kfp").warning("library warning")
        os.write(2, b"nanobind: leaked 1 instances\n")
        terminal.write("the story\n")
    out, err = capfd.readouterr()
    text = log.read_text()
    assert "kfp noise" in text and "warn" in text and "library warning" in text and "nanobind" in text
    assert "the story" in out and "kfp noise" not in out + err and "nanobind" not in out + err
