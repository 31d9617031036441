"""Signposts point somewhere real: a docstring, a message or a page that names a file, a command, an
environment variable, a make target or a market calendar names one that exists.

Scanned: the Python sources of ``src/``, ``serving/``, ``components/``, ``pipelines/`` and ``bench/``
(docstrings, comments and messages alike), ``docs/*.md``, ``README.md``, ``params.yaml`` and
``pyproject.toml``. Each check is also run on a planted stale signpost, so it can fail.

* a repository path (``src/...``, ``docs/...``, ``tests/...``; ``hfcast/...`` under ``src/``) exists,
  up to any placeholder (``<model>``, ``{name}``, ``*``) in it; a ``NAME.md`` exists in the
  repository; nothing points outside it (the shared notes and design of the machine it was built on);
* ```hfcast X Y``` (in backticks or a code block) is a command of the installed command line;
* ``HFCAST_*`` is read by some code (a string constant other than a docstring, or ``$HFCAST_*`` in a
  script);
* ``make X`` is a target of the Makefile, and every target the Makefile declares exists;
* a calendar name (``XNYS``, ``CME_Equity``, ``CMES``...) resolves (:func:`hfcast.market.calendar_known`).
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOP = ("src", "tests", "docs", "bench", "components", "pipelines", "serving", "manifests", "docker", "feature_repo",
       ".ci", "hfcast")
OUTSIDE = ("PLATFORM_NOTES", "/work/shared", "../../shared")  # what lives on the build machine, not in the repository
OUTPUTS = ("bench/results/",)  # folders of files that scripts write: the folder must exist, a file need not yet


def _sources() -> list[Path]:
    files = [p for d in ("src", "serving", "components", "pipelines", "bench") for p in (ROOT / d).rglob("*.py")
             if "__pycache__" not in p.parts]
    files += sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md", ROOT / "params.yaml", ROOT / "pyproject.toml"]
    return sorted(files)


PATH = re.compile(r"(?<![\w/.:@$-])((?:\.ci|bench|components|docker|docs|feature_repo|manifests|pipelines|serving|src|"
                  r"tests|hfcast)/[\w./<>{}*-]*)")
MD = re.compile(r"(?<![\w/.-])([A-Za-z][\w-]*\.md)\b")


def _path_exists(rel: str, where: Path) -> bool:
    """``rel`` relative to the repository or to the citing file; ``pkg/mod.attr`` as ``pkg/mod.py``."""
    tries = [rel]
    head, dot, attr = rel.rpartition(".")
    if dot and "/" not in attr and not (ROOT / rel).exists():
        tries.append(f"{head}.py")  # a dotted reference: components/_common.step_settings
    return any((base / t).exists() for t in tries for base in (ROOT, where.parent))


def _path_problems(text: str, where: Path) -> list[str]:
    out = []
    for m in PATH.finditer(text):
        raw = m.group(1)
        stem = re.split(r"[<{*]", raw, maxsplit=1)[0].rstrip(".")
        first, _, rest = stem.partition("/")
        if not rest.strip("/") or rest[0].isdigit():
            continue  # a bare folder, a placeholder straight after it, or NAME/VERSION (hfcast/3, bench/1)
        if first == "hfcast" and not (".py" in stem or stem.endswith("/")):
            continue  # hfcast/... names a module only as a file or a folder (not hfcast/model-version)
        rel = ("src/" + stem) if first == "hfcast" else stem
        if stem != raw or rel.startswith(OUTPUTS):  # up to a placeholder, or a written file: its folder
            rel = rel.rpartition("/")[0]
        if not _path_exists(rel, where):
            out.append(f"{where.relative_to(ROOT)}: no such file {raw!r}")
    for m in MD.finditer(text):
        name = m.group(1)
        if not (list(ROOT.glob(name)) or list((ROOT / "docs").glob(name)) or (where.parent / name).exists()
                or list(ROOT.glob(f"*/**/{name}"))):
            out.append(f"{where.relative_to(ROOT)}: no page {name!r} in the repository")
    for name in OUTSIDE:
        if name in text:
            out.append(f"{where.relative_to(ROOT)}: points outside the repository ({name})")
    return out


@lru_cache(maxsize=1)
def _commands() -> dict[tuple[str, ...], bool]:
    """Every command path of the installed ``hfcast`` (plugins included) -> whether it is a group."""
    import click
    import typer

    from hfcast.cli import build_app

    out: dict[tuple[str, ...], bool] = {}

    def walk(cmd: click.Command, path: tuple[str, ...]) -> None:
        out[path] = isinstance(cmd, click.Group)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(build_app()), ())
    return out


CMD = re.compile(r"`hfcast((?: [a-z][a-z0-9-]*)+)")  # in backticks: `hfcast x`, ``hfcast x``
BLOCK_CMD = re.compile(r"^\s*(?:\$ )?hfcast((?: [a-z][a-z0-9-]*)+)", re.M)  # a line of a fenced code block


def _code_blocks(text: str) -> str:
    return "\n".join(re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S))


def _command_problems(text: str, where: Path) -> list[str]:
    known, out = _commands(), []
    for m in [*CMD.finditer(text), *BLOCK_CMD.finditer(_code_blocks(text))]:
        words, path = m.group(1).split(), ()
        for w in words:
            if (*path, w) in known:
                path = (*path, w)
                continue
            if not path or known.get(path):  # unknown at top level, or under a group
                out.append(f"{where.relative_to(ROOT)}: `hfcast {' '.join([*path, w])}` is no command")
            break
    return out


@lru_cache(maxsize=1)
def _env_read() -> frozenset[str]:
    """``HFCAST_*`` names some code reads: a string constant that is not a docstring, or ``$NAME`` in a script."""
    names: set[str] = set()
    for d in ("src", "serving", "components", "pipelines", "bench", "tests"):
        for p in (ROOT / d).rglob("*.py"):
            tree = ast.parse(p.read_text())
            docs = {id(n.body[0].value) for n in ast.walk(tree)
                    if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                    and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
            names |= {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                      and id(n) not in docs and re.fullmatch(r"HFCAST_[A-Z0-9_]+", n.value)}
    for script in [ROOT / ".ci" / "run", ROOT / "Makefile", *(ROOT / "docker").glob("*")]:
        if script.is_file():
            names |= set(re.findall(r"\$\{?(HFCAST_[A-Z0-9_]+)", script.read_text()))
    return frozenset(names)


def _env_problems(text: str, where: Path) -> list[str]:
    return [f"{where.relative_to(ROOT)}: {name} is read by nothing" for name in
            sorted(set(re.findall(r"\b(HFCAST_[A-Z0-9_]*[A-Z0-9])\b", text)) - _env_read())]


def _make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))


def _make_problems(text: str, where: Path) -> list[str]:
    targets = _make_targets()
    return [f"{where.relative_to(ROOT)}: `make {t}` is no Makefile target"
            for t in sorted(set(re.findall(r"`make ([\w-]+)", text)) - targets)]


CAL = re.compile(r"\b(X[A-Z]{3}|CMES|(?:CME|CBOT|NYMEX|COMEX|CFE|ICE|EUREX|CMEGlobex)_?[A-Za-z0-9]*_[A-Za-z0-9_]+|"
                 r"CMEGlobex\w*)\b")


def _calendar_problems(text: str, where: Path) -> list[str]:
    from hfcast.market import calendar_known

    return [f"{where.relative_to(ROOT)}: calendar {name!r} is unknown to exchange_calendars and "
            f"pandas_market_calendars" for name in sorted(set(CAL.findall(text))) if not calendar_known(name)]


CHECKS = (_path_problems, _command_problems, _env_problems, _make_problems, _calendar_problems)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.strip("_"))
def test_a_planted_stale_signpost_is_found(check):
    planted = ("see `docs/NO_SUCH.md` and src/hfcast/nowhere.py, or DESIGN_ELSEWHERE.md; run `hfcast services status`; "
               "set HFCAST_NO_SUCH_VAR; `make test-everything`; calendar CMEGlobex_ES")
    assert check(planted, ROOT / "README.md"), f"{check.__name__} missed its planted case"


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.strip("_"))
def test_signposts_point_somewhere_real(check):
    problems = [p for f in _sources() for p in check(f.read_text(), f)]
    assert not problems, "stale signposts:\n" + "\n".join(problems)


def test_every_declared_make_target_exists():
    text = (ROOT / "Makefile").read_text()
    declared = set(" ".join(re.findall(r"^\.PHONY:(.*)$", text, re.M)).split())
    assert declared and not declared - _make_targets(), f"declared but missing: {sorted(declared - _make_targets())}"
