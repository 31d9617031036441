"""What the demo shows on the terminal (one screenful) and where everything else goes (a log file).

Why: the demo used to print 5,000+ lines (each Kubeflow task's input JSON, library warnings,
"nanobind: leaked" dumps) around a 4-line summary without a single quality number. Here the
file descriptors 1 and 2 are pointed at ``<home>/demo.log`` for the whole run (so subprocesses,
the Kubeflow local runner and C libraries write there too), while the story goes to the real
terminal through a duplicate of the original stdout.
"""

from __future__ import annotations

import logging
import os
import sys
import textwrap
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

#: the most lines the demo may print (one screenful)
MAX_LINES = 80


@contextmanager
def quiet_terminal(log_path: Path) -> Iterator[Any]:
    """Send fd 1/2, Python logging and warnings to ``log_path``; yield a file object on the terminal.

    The returned stream writes to the ORIGINAL stdout; use it for the few lines of the story.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved_out), "w", buffering=1, encoding="utf-8")
    logfile = open(log_path, "ab", buffering=0)
    os.dup2(logfile.fileno(), 1)
    os.dup2(logfile.fileno(), 2)
    root = logging.getLogger()
    old_handlers, old_level = root.handlers[:], root.level
    handler = logging.StreamHandler(open(log_path, "a", buffering=1, encoding="utf-8"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers, root.level = [handler], logging.INFO
    logging.captureWarnings(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        logging.captureWarnings(False)
        root.handlers, root.level = old_handlers, old_level
        handler.close()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for fd in (saved_out, saved_err):
            os.close(fd)
        logfile.close()
        terminal.flush()


def redirect_teardown(log_path: Path) -> None:
    """After the story is printed, send whatever libraries write at interpreter exit to the log."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.dup2(fd, 2)
    os.close(fd)


def _num(v: Any, fmt: str = ".3g") -> str:
    try:
        return format(float(v), fmt)
    except (TypeError, ValueError):
        return "-"


def _cut(text: str, n: int) -> str:
    """``text`` cut at a word boundary to at most ``n`` characters ("..." when cut)."""
    return text if len(text) <= n else text[:n - 3].rsplit(" ", 1)[0] + "..."


def _score_lines(scores: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per model: QLIKE, IC, coverage, ECE (the comparison the gate made)."""
    out = [f"  {'model':<26}{'QLIKE':>9}{'IC':>9}{'cov ret':>9}{'cov vol':>9}{'ECE vol':>9}"]
    for name, s in list(scores.items())[:8]:
        out.append(f"  {str(name)[:26]:<26}{_num(s.get('vol_qlike')):>9}{_num(s.get('ret_ic')):>9}"
                   f"{_num(s.get('ret_coverage'), '.2f'):>9}{_num(s.get('rv_coverage'), '.2f'):>9}"
                   f"{_num(s.get('rv_ece'), '.3f'):>9}")
    return out


def _monitor_lines(monitoring: Sequence[Mapping[str, Any]], limit: int = 24) -> list[str]:
    """The monitored dates, compactly: date, drift share, decision (retrainings always shown)."""
    rows = list(monitoring)
    if len(rows) > limit:  # keep every retraining and the ends
        keep = {0, len(rows) - 1} | {i for i, r in enumerate(rows) if r.get("action") == "retrain"}
        rows = [r for i, r in enumerate(rows) if i in keep or i < limit - len(keep)]
    return [f"  {r.get('date')}  drift {_num(r.get('drift_share'), '.2f')}  {r.get('action')}"
            + (f"  ({_cut(str(r.get('explanation', '')), 60)})" if r.get("action") == "retrain" else "")
            for r in rows]


def summary_lines(summary: Mapping[str, Any], log_path: str | os.PathLike) -> list[str]:
    """The demo's story in at most :data:`MAX_LINES` lines, key numbers included."""
    lines = ["hfcast demo: simulate -> train -> gate -> predict -> monitor -> retrain -> serve", ""]
    for step, secs in (summary.get("steps_seconds") or {}).items():
        lines.append(f"  {secs:>7.1f} s  {str(step)[:70]}")
    scores = summary.get("scores") or {}
    if scores:
        lines += ["", "test scores on the same walk-forward spans (champion vs baselines):", *_score_lines(scores)]
    for note in summary.get("notes") or []:
        lines += textwrap.wrap(note, 100, initial_indent="  note: ", subsequent_indent="        ")
    if summary.get("monitoring"):
        lines += ["", "monitoring (feature drift share, decision):", *_monitor_lines(summary["monitoring"])]
    lines += ["", f"champion v{summary.get('champion_before')} -> v{summary.get('champion_after')}; "
                  f"retrainings: {', '.join(summary.get('retrainings') or []) or 'none'}"]
    if summary.get("champion_kind"):  # what is served: chosen on validation, per target
        lines += textwrap.wrap(f"served by v{summary.get('champion_after')}: {summary['champion_kind']}", 100,
                               subsequent_indent="  ")
    sv = summary.get("serving")
    if sv:
        lines.append(f"server: V1 {sv.get('v1_status')}, V2 {sv.get('v2_status')}, "
                     f"malformed request -> {sv.get('bad_request_status')}")
    lines += [f"wall time {summary.get('seconds')} s", f"report: {summary.get('index')}",
              f"MLflow:  mlflow ui --backend-store-uri {summary.get('mlflow_uri', '')}", f"full log: {log_path}"]
    if len(lines) > MAX_LINES:
        lines = lines[:MAX_LINES - 1] + [f"... (see {log_path})"]
    return lines
