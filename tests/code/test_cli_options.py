"""Every option of every ``hfcast`` command, given a bad value of its kind, ends in two lines
(``error: ...`` naming the option, ``  fix: ...``), exit 2, no traceback, and before any work.

Generated, not hand-picked: the test walks the command tree the console script builds (core
commands and the plug-ins' ``serve``, ``pipeline``, ``demo``) and derives bad values from each
parameter's declared type: a wrong type and an out-of-range number for numbers, an unknown choice,
a bad URL scheme, a missing or wrong path, a malformed date... (:mod:`hfcast.cliopts` names each
parser's kind). Every command body is replaced by a tripwire, so a bad value that got through
parsing fails the test instead of running the command. Free-text options (a reason, a namespace)
have no bad value; they are listed here, and a new option must be classified to pass.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import typer.testing as typer_testing

FREE_TEXT = {  # options whose every string is valid: nothing to refuse
    ("registry promote", "--reason"), ("registry rollback", "--reason"), ("monitor history", "--model"),
    ("pipeline submit", "--experiment"), ("pipeline submit", "--namespace"), ("pipeline submit", "--service-account"),
}
GOOD = {  # valid values by parser kind, for the required parameters given beside the bad one
    "date": "2024-01-02", "dates": "2024-01-02", "timestamp": "2024-01-05T15:00:00Z", "symbol": "AAPL",
    "model-ref": "hfcast/1", "fold-setting": "test_days=2", "settings-json": "{}",
}


def _bad_values(kind: str, tmp: Path) -> list[str]:
    bundle_without_arch = tmp / "no-arch"
    bundle_without_arch.mkdir(exist_ok=True)
    (bundle_without_arch / "model.json").write_text(json.dumps({"n_features": 3}))
    a_file = tmp / "a-file.txt"
    a_file.write_text("x")
    return {
        "storage-url": ["gopher://x/lake", "ftp://x/y", "s3://"],
        "date": ["2024-13-45", "yesterday"],
        "dates": ["2024-01-02..someday", "2024-01-02,2024-02-30"],
        "timestamp": ["yesterday noon"],
        "calendar": ["NOPE"],
        "timezone": ["Mars/Olympus_Mons"],
        "model-ref": ["hfcast/not-a-version", "two words"],
        "bundle": [str(a_file), str(tmp / "missing-bundle"), str(bundle_without_arch)],
        "input-file": [str(tmp / "missing.csv"), "gopher://x/f.csv"],
        "local-file": [str(tmp / "missing.parquet")],
        "input-dir": [str(tmp / "missing-folder")],
        "output-dir": [str(a_file / "sub")],
        "http-url": ["localhost:8080", "ftp://host"],
        "column-map": ["ts", "=Timestamp"],
        "key-value": ["novalue"],
        "fold-setting": ["test_days", "test_dayz=3"],
        "settings-json": ["{not json", "[1, 2]"],
        "cron": ["0 30 21 * *"],
        "symbol": ["A\u202eB", "A" * 5000, "A\x00B"],
        "choice": ["bogus"],
        "list-of-choice": ["bogus", "tcn,bogus"],
    }[kind]


def _walk(cmd, path=()):
    if hasattr(cmd, "commands"):
        for name, sub in sorted(cmd.commands.items()):
            yield from _walk(sub, (*path, name))
    else:
        yield " ".join(path), cmd


def _annotation(param) -> type | None:
    ann = param.type_descriptor.annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    return args[0] if typing.get_origin(ann) in (typing.Union, getattr(__import__("types"), "UnionType", None)) \
        and len(args) == 1 else ann


def _kind(param) -> str | None:
    parser = param.type_descriptor.parameter_info.parser
    return getattr(parser, "kind", None) if parser is not None else None


def _cases(tmp: Path):
    """(command, parameter, bad value, arguments) for every parameter that has a bad value."""
    from hfcast.cli import build_app

    root = typer.main.get_command(build_app())
    cases, free, flags = [], [], []
    for name, cmd in _walk(root):
        params = [p for p in cmd.params if not getattr(p, "hidden", False)]
        for p in params:
            label = p.opts[0] if p.param_type_name == "option" else p.name
            if p.is_flag if hasattr(p, "is_flag") else False:
                flags.append((name, label))
                continue
            bad = _bad_for(p, tmp)
            if not bad:
                free.append((name, label))
                continue
            for value in bad:
                cases.append((name, label, value, _argv(name, params, p, value, tmp)))
    return root, cases, free, flags


def _bad_for(p, tmp: Path) -> list[str]:
    kind = _kind(p)
    if kind is not None:
        return _bad_values(kind, tmp)
    ann = _annotation(p)
    if typing.get_origin(ann) is list:
        ann = typing.get_args(ann)[0]
    if ann in (int, float):
        out = ["not-a-number"]
        if p.min is not None:
            out.append(str(p.min - 1))
        if p.max is not None:
            out.append(str(p.max + 1))
        return out
    if ann is bool:
        return []
    return []


def _good_for(p, tmp: Path) -> str:
    kind = _kind(p)
    if kind == "choice":
        return p.type_descriptor.parameter_info.parser.allowed()[0]
    if kind in ("input-file", "local-file"):
        f = tmp / "good.csv"
        f.write_text("symbol,ts,bid,ask,bid_size,ask_size\n")
        return str(f)
    return GOOD[kind]


def _argv(name: str, params, bad_param, value: str, tmp: Path) -> list[str]:
    """The command, its other required parameters with good values (first), then the bad one."""
    args, positional = list(name.split()), []
    for p in params:
        if p is bad_param or not p.required:
            continue
        if p.param_type_name == "option":
            args += [p.opts[0], _good_for(p, tmp)]
        else:
            positional.append(_good_for(p, tmp))
    if bad_param.param_type_name == "option":
        return [*args, bad_param.opts[0], value, *positional]
    return [*args, *positional, value]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("opts")
    root, cases, free, flags = _cases(tmp)
    for _, cmd in _walk(root):  # a tripwire in place of every command body
        def reached(*a, _name=cmd.name, **k):
            raise AssertionError(f"a bad value reached the body of {_name}")
        cmd.callback = reached
    return root, cases, free, flags


def test_the_generated_cases_cover_every_option(generated):
    root, cases, free, flags = generated
    names = {name for name, _ in _walk(root)}
    assert {"ingest", "predict", "serve", "pipeline run", "pipeline submit", "demo", "replay", "monitor run"} <= names
    assert set(free) == FREE_TEXT, "classify new free-text options (or give them a parser)"
    options = {(c, o) for c, o, _, _ in cases}
    print(f"\n{len(names)} commands, {len(options) + len(free) + len(flags)} parameters: {len(options)} given "
          f"{len(cases)} bad values, {len(flags)} flags, {len(free)} free text")
    assert len(options) >= 80


def test_every_bad_value_is_two_lines_exit_2(generated, monkeypatch, tmp_path):
    root, cases, _, _ = generated
    monkeypatch.setattr(typer_testing, "_get_command", lambda app: root)
    monkeypatch.setenv("HFCAST_HOME", str(tmp_path / ".hfcast"))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    failures = []
    for name, label, value, argv in cases:
        res = runner.invoke(typer.Typer(), argv)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        problem = None
        if res.exit_code != 2:
            problem = f"exit {res.exit_code}"
        elif len(lines) != 2 or not lines[0].startswith("error: ") or not lines[1].startswith("  fix: "):
            problem = "not two lines error:/fix:"
        elif label.lstrip("-") not in lines[0]:
            problem = "the bad parameter is not named first"
        elif "Traceback" in res.output or res.exception and not isinstance(res.exception, SystemExit):
            problem = f"traceback / exception {res.exception!r}"
        if problem:
            failures.append(f"{name} {label}={value[:30]!r}: {problem}: {res.stderr[-300:]!r} {res.exception!r}")
    assert not failures, "\n".join(failures)
