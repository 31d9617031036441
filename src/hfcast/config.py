"""Typed settings for hfcast, read from the environment (and optionally params.yaml).

Nothing is read at import time: call :func:`get_settings` (or build :class:`Settings` directly).
Every path is absolute so that a Kubeflow component, a DVC stage and a test all agree on where
the lake, the registry and the feature store live, whatever their working directory.

Environment variables (all optional):

==========================  ===========================================================
HFCAST_HOME                 state folder for embedded defaults (default ``./.hfcast``)
HFCAST_LAKE                 lake URL: ``file:///abs/path`` or ``s3://bucket/prefix``
MLFLOW_TRACKING_URI         MLflow tracking URI (default sqlite file under HFCAST_HOME)
HFCAST_FEAST_REPO           Feast repository folder (default ``<HFCAST_HOME>/feature_repo``)
HFCAST_FEAST_ONLINE         Feast online store: unset = SQLite in the repository folder;
                            ``redis://[:password@]host:port[/db]`` = Redis (the cluster's)
HFCAST_S3_ENDPOINT          S3 endpoint URL (e.g. ``http://127.0.0.1:8333``); unset = AWS
AWS_ACCESS_KEY_ID           S3 credentials (never logged)
AWS_SECRET_ACCESS_KEY
HFCAST_PARAMS               params.yaml path (default ``./params.yaml`` when present)
HFCAST_DVC_REMOTE           DVC remote of the features' versions (params ``dvc.remote``; hfcast.versioning)
HFCAST_DVC_WORKSPACE        local mirror of an object-store lake's features (params ``dvc.workspace``)
==========================  ===========================================================
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, TypeVar

import yaml

from hfcast.errors import UserError

if TYPE_CHECKING:  # the calendar needs pandas: config stays light for `hfcast --help`
    from hfcast.market import Market

T = TypeVar("T")


class Secret(str):
    """A string whose repr and str never reveal the value (credentials in logs, tracebacks)."""

    def __repr__(self) -> str:
        return "Secret('***')" if self else "Secret('')"

    def reveal(self) -> str:
        """The real value, for the one place that needs it (the S3 client)."""
        return str.__str__(self)

    def __str__(self) -> str:
        return "***" if str.__len__(self) else ""

    def __format__(self, spec: str) -> str:
        # str.__format__ would format the real value when a spec is given (f"{s:>10}")
        return format(str(self), spec)


@dataclass(frozen=True)
class Settings:
    """Where things live. Build it with :func:`get_settings` unless a test needs explicit values."""

    home: Path
    lake_url: str
    mlflow_uri: str
    feast_repo: Path
    s3_endpoint: str | None = None
    s3_key: Secret = field(default_factory=lambda: Secret(""))
    s3_secret: Secret = field(default_factory=lambda: Secret(""))
    model_name: str = "hfcast"
    params: Mapping[str, Any] = field(default_factory=dict)
    feast_online: str = ""  # HFCAST_FEAST_ONLINE: "" = SQLite, redis://host:port = Redis
    # params sections parsed into their dataclasses (section()), once per Settings object
    _sections: dict[type, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options of the settings' lake (empty for local paths)."""
        return self.storage_options_for(self.lake_url)

    def storage_options_for(self, url: str) -> dict[str, Any]:
        """The fsspec/s3fs options of any URL under these settings: the one rule every storage client
        is built by, whether the URL came from ``--lake``, ``HFCAST_LAKE`` or a settings parameter
        (same endpoint, same credentials; TLS follows the endpoint's scheme and botocore's
        ``AWS_CA_BUNDLE``)."""
        if url_scheme(url) != "s3":
            return {}
        return s3_storage_options(self.s3_endpoint, self.s3_key, self.s3_secret)

    def with_(self, **changes: Any) -> "Settings":
        """A copy with some fields replaced (``settings.with_(lake_url="s3://b/p")``)."""
        return dataclasses.replace(self, **changes)

    def to_param(self) -> str:
        """These settings as ONE JSON string, for a pipeline or component parameter.

        Why: every component needs the same settings; one parameter replaces six repeated in every
        signature. Credentials are NEVER included (they would show in the Kubeflow UI): the
        receiving side reads them from its own environment (:func:`settings_from_param`).
        """
        doc = {"home": str(self.home), "lake_url": self.lake_url, "mlflow_uri": self.mlflow_uri,
               "feast_repo": str(self.feast_repo), "s3_endpoint": self.s3_endpoint or "",
               "model_name": self.model_name, "params": dict(self.params)}
        return json.dumps(doc, sort_keys=True, default=str)

    def section(self, cls: type[T]) -> T:
        """The params.yaml section ``cls.SECTION`` parsed into ``cls`` (``cls.from_params``), once.

        Why: a section read in several places (``monitor:`` by the monitor, the reference, the
        report and the lifecycle) is parsed and checked by one rule, and a typo in it fails the
        same way wherever it is first read. ``settings.section(MonitorConfig).cooldown_dates``.
        """
        if cls not in self._sections:
            self._sections[cls] = cls.from_params(self.param(cls.SECTION, {}))  # type: ignore[attr-defined]
        return self._sections[cls]

    @property
    def market(self) -> "Market":
        """The trading calendar of params.yaml ``market:`` (XNYS when absent), shared per spec
        (:func:`hfcast.market.get_market` caches: every stage holding the same settings holds the same
        calendar and its loaded session table).

        The calendar travels with the settings as a value: nothing process-wide is set when
        settings are built, and a function given ``market=None`` means XNYS
        (:func:`hfcast.market.default`), never a calendar some other caller configured.
        """
        from hfcast.market import get_market  # pandas: loaded when a calendar is asked for

        spec = self.param("market", None)
        if spec is not None and not isinstance(spec, (str, Mapping)):
            raise ValueError(f"market: must be a mapping like {{calendar: XLON}} or a calendar name, "
                             f"got {type(spec).__name__}")
        return get_market(spec or None)

    def param(self, dotted: str, default: Any = None) -> Any:
        """A value from params.yaml by dotted key, e.g. ``settings.param("train.epochs", 5)``."""
        node: Any = self.params
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node


STORAGE_SCHEMES = ("file", "s3")  # what the lake, prediction outputs and bundles may live on


def url_scheme(url: str) -> str:
    """``s3``, ``file`` (a ``file://`` URL or a plain path), or the unsupported scheme as written."""
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def check_storage_url(url: str, what: str = "the lake URL") -> str:
    """``url`` when hfcast can store there, else a :class:`hfcast.errors.UserError` naming ``what``.

    Why refuse early: fsspec knows dozens of protocols (ftp, gopher through http, ...), and a typo
    would otherwise surface as a traceback deep in the first write, after the work was done.
    """
    scheme = url_scheme(url)
    if scheme not in STORAGE_SCHEMES:
        raise UserError(f"{what} {url!r} has the scheme {scheme}://, which hfcast cannot store to",
                        "use s3://bucket/prefix (HFCAST_S3_ENDPOINT for a non-AWS server), file:///abs/path or a "
                        "plain path")
    if scheme == "s3" and not url[len("s3://"):].strip("/"):
        raise UserError(f"{what} {url!r} names no bucket", "use s3://bucket/prefix")
    return url


def s3_storage_options(endpoint: str | None, key: str, secret: str) -> dict[str, Any]:
    """Options that s3fs / pandas ``storage_options`` understand."""
    opts: dict[str, Any] = {}
    if key:
        opts["key"] = key.reveal() if isinstance(key, Secret) else key
        opts["secret"] = secret.reveal() if isinstance(secret, Secret) else secret
    if endpoint:
        opts["client_kwargs"] = {"endpoint_url": endpoint}
    return opts


def load_params(path: str | os.PathLike | None) -> dict[str, Any]:
    """Read params.yaml; a missing file gives an empty mapping (embedded defaults apply)."""
    if path is None:
        return {}
    p = Path(path)
    if not p.exists():
        return {}
    with p.open() as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{p}: params file must hold a mapping at top level, got {type(data).__name__}")
    return data


def get_settings(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Settings:
    """Settings from the environment and params.yaml, with embedded defaults under ``./.hfcast``.

    No side effect: the market calendar is read from the settings (:attr:`Settings.market`).
    """
    return _read_settings(env, cwd)


def _read_settings(env: Mapping[str, str] | None, cwd: Path | None) -> Settings:
    """Settings from the environment and params.yaml."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else Path(cwd)
    # relative paths resolve against ``cwd`` (not the process directory) so that tests and DVC
    # stages that pass ``cwd`` get the same absolute paths
    home = (cwd / (env.get("HFCAST_HOME") or ".hfcast")).resolve()
    lake = check_storage_url(env.get("HFCAST_LAKE") or (home / "lake").as_uri(), "HFCAST_LAKE")
    if "://" not in lake:  # a plain path (e.g. ``data/lake`` in a DVC stage): absolute file:// URL
        lake = (cwd / lake).resolve().as_uri()
    mlflow_uri = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"
    feast_repo = (cwd / (env.get("HFCAST_FEAST_REPO") or home / "feature_repo")).resolve()
    params_path = cwd / (env.get("HFCAST_PARAMS") or "params.yaml")
    return Settings(
        home=home,
        lake_url=lake.rstrip("/"),
        mlflow_uri=mlflow_uri,
        feast_repo=feast_repo,
        s3_endpoint=env.get("HFCAST_S3_ENDPOINT") or env.get("AWS_ENDPOINT_URL") or None,
        s3_key=Secret(env.get("AWS_ACCESS_KEY_ID", "")),
        s3_secret=Secret(env.get("AWS_SECRET_ACCESS_KEY", "")),
        model_name=env.get("HFCAST_MODEL_NAME", "hfcast"),
        params=load_params(params_path),
        feast_online=env.get("HFCAST_FEAST_ONLINE", ""),
    )


# --- settings passed as a parameter (components, pipelines, starters) ------------------------------

#: the fields of :meth:`Settings.to_param` that stand for an environment variable
PARAM_ENV = {"home": "HFCAST_HOME", "lake_url": "HFCAST_LAKE", "mlflow_uri": "MLFLOW_TRACKING_URI",
             "feast_repo": "HFCAST_FEAST_REPO", "s3_endpoint": "HFCAST_S3_ENDPOINT",
             "model_name": "HFCAST_MODEL_NAME"}


def checked_section(cls: type, section: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    """``section`` as a dict whose every key is a field of the dataclass ``cls``.

    Why an error and not a skip: a misspelt key in params.yaml would otherwise leave the default
    in force without a word. ``what`` names the keys in the message, e.g. "train parameter(s)".
    """
    section = dict(section or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; known: {sorted(known)}")
    return section


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in, recursively for nested mappings (override wins)."""
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def parse_overrides(params_json: str) -> dict[str, Any]:
    """A JSON object of params.yaml overrides ('' or '{}' = none), with a message a user can act on."""
    if not params_json or not params_json.strip():
        return {}
    return _json_object(params_json, "params_json", 'a JSON object like {"train": {"epochs": 1}}')


def _json_object(text: str, name: str, expected: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object, or a ValueError that names the parameter and the expected form."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} is not valid JSON ({exc}): {text[:200]!r}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{name} must be {expected}, got {text[:200]!r}")
    return doc


def make_settings(home: str = "", lake_url: str = "", mlflow_uri: str = "", feast_repo: str = "",
                  s3_endpoint: str = "", params_json: str = "", env: Mapping[str, str] | None = None,
                  model_name: str = "") -> Settings:
    """Settings from the environment, with every non-empty argument taking precedence.

    Args:
        home, lake_url, mlflow_uri, feast_repo, s3_endpoint, model_name: see the module doc; '' = from env.
        params_json: JSON overrides merged into params.yaml (e.g. fewer epochs for a smoke run).
        env: the environment (default ``os.environ``); credentials are read from it only.
    """
    given = {"home": home, "lake_url": lake_url, "mlflow_uri": mlflow_uri, "feast_repo": feast_repo,
             "s3_endpoint": s3_endpoint, "model_name": model_name}
    merged_env = dict(os.environ if env is None else env)
    merged_env.update({PARAM_ENV[k]: v for k, v in given.items() if v})
    settings = _read_settings(merged_env, None)
    overrides = parse_overrides(params_json)
    return settings.with_(params=deep_merge(settings.params, overrides)) if overrides else settings


def settings_from_param(text: str, env: Mapping[str, str] | None = None) -> Settings:
    """The inverse of :meth:`Settings.to_param`, on the receiving side (a component's pod).

    '' or '{}' gives plain :func:`get_settings` from ``env``. Every non-empty field overrides the
    environment; ``params`` is merged over the local params.yaml (so a partial mapping is an
    override, a full one a replacement). Credentials come from ``env`` only, never from ``text``.
    """
    if not text or not text.strip():
        doc: dict[str, Any] = {}
    else:
        doc = _json_object(text, "the settings parameter", "a JSON object (Settings.to_param())")
    unknown = sorted(set(doc) - set(PARAM_ENV) - {"params"})
    if unknown:
        raise ValueError(f"the settings parameter has unknown field(s) {unknown}; expected {sorted(PARAM_ENV)} and params")
    fields_ = {k: str(doc.get(k) or "") for k in PARAM_ENV}
    params = doc.get("params") or {}
    if not isinstance(params, Mapping):
        raise ValueError(f"settings.params must be a JSON object, got {type(params).__name__}")
    return make_settings(**fields_, params_json=json.dumps(params) if params else "", env=env)
