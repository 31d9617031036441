"""Prepare the data: DVC stages (cluster / repo checkout) or synth -> validate -> featurize (embedded)."""

from kfp.dsl import Dataset, Output

from components._image import hfcast_component


@hfcast_component
def prepare_data(
    features: Output[Dataset],
    home: str = "",
    lake_url: str = "",
    mlflow_uri: str = "",
    feast_repo: str = "",
    s3_endpoint: str = "",
    params_json: str = "",
    dvc_repo: str = "",
    synth_symbols: int = 0,
    synth_days: int = 0,
    synth_seed: int = -1,
    synth_shift_day: int = -1,
) -> str:
    """Bring the features table up to date and return its dataset version.

    With ``dvc_repo`` (a DVC repository checkout): ``dvc repro`` (``hfcast.dataset.prepare``); the
    lake is ``<dvc_repo>/data/lake`` and the version is the DVC hash of its features. Otherwise, on
    the lake given by the settings: simulate a market when ``synth_symbols`` > 0 and the lake has
    no raw bars yet, then validate and featurize every raw date; the version is DVC's folder hash
    of the features (local lakes) or 'unversioned' (object-store lake outside DVC). It also opens
    the MLflow store once, so the parallel training steps do not race to create its schema.

    Args:
        synth_symbols, synth_days, synth_seed: simulated universe (0 / -1 = params.yaml ``synth``).
        synth_shift_day: first day of the shifted regime (-1 = params.yaml, -2 = stationary).

    Returns:
        The dataset version (also in the ``features`` artifact's metadata, with the lake URL).
    """
    import json
    import logging
    from pathlib import Path

    from components._settings import make_settings
    from hfcast import dataset, registry, storage
    from hfcast.storage import Lake

    logging.basicConfig(level=logging.INFO)
    if dvc_repo:
        lake_url = (Path(dvc_repo).resolve() / dataset.LAKE_DIR).as_uri()
    s = make_settings(home, lake_url, mlflow_uri, feast_repo, s3_endpoint, params_json)
    lake = Lake.from_settings(s)
    if dvc_repo:
        version = dataset.prepare(dvc_repo)
    else:
        from hfcast.data.simulator import SimConfig, write_synth
        from hfcast.data.validate import DEFAULT_JUMP_LIMIT, run_validate
        from hfcast.features.engine import run_featurize

        if synth_symbols > 0 and not lake.dates("raw"):
            cfg = SimConfig.from_params(s.param("synth", {}), n_symbols=synth_symbols, n_days=synth_days or None,
                                        seed=None if synth_seed < 0 else synth_seed,
                                        regime_shift_day=synth_shift_day if synth_shift_day >= 0 else None)
            if synth_shift_day == -2:
                cfg.regime_shift_day = None
            write_synth(cfg, lake, progress=False)
        run_validate(lake, progress=False, jump_limit=float(s.param("validate.jump_limit", DEFAULT_JUMP_LIMIT)))
        run_featurize(lake, dates=s.param("featurize.dates", None), progress=False)
        table = lake.table("features")
        version = "unversioned" if storage.is_remote(table) else dataset.folder_hash(storage.local_path(table))
    with registry.tracking(s) as t:  # schema + experiment now: parallel train steps would race on creating them
        t.experiment_id  # noqa: B018 (property creates the experiment)
    dates = lake.dates("features")
    info = {"lake_url": lake.url, "features_url": lake.table("features"), "dataset_version": version,
            "n_dates": len(dates), "first_date": dates[0] if dates else "", "last_date": dates[-1] if dates else ""}
    features.metadata.update(info)  # the artifact is a pointer: the data stays in the lake
    Path(features.path).write_text(json.dumps({**info, "dates": dates}, indent=1))
    return version
