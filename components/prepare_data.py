"""Prepare the data: DVC stages (repository checkout) or simulate -> validate -> featurize on the lake."""

from kfp.dsl import Dataset, Output

from components._image import hfcast_component


@hfcast_component
def prepare_data(
    features: Output[Dataset],
    settings: str = "",
    dvc_repo: str = "",
    synth_symbols: int = 0,
    synth_days: int = 0,
    synth_seed: int = -1,
    synth_shift_day: int = -1,
) -> str:
    """Bring the features table up to date and return its dataset version
    (``hfcast.prepare.prepare_data``: the DVC hash, pushed to params.yaml ``dvc.remote``; an
    object-store lake is mirrored into ``HFCAST_DVC_WORKSPACE``, a volume on a cluster).

    Args:
        settings: ``Settings.to_param()`` JSON ('' = the pod's environment / hfcast-config).
        dvc_repo: a DVC repository checkout: ``dvc repro`` there; its ``data/lake`` is the lake.
        synth_symbols, synth_days, synth_seed: simulate this universe when the lake has no raw bars
            (0 / -1 = params.yaml ``synth``; ``synth_symbols`` 0 = never simulate).
        synth_shift_day: first day of the shifted regime (-1 = params.yaml, -2 = stationary).

    Returns:
        The dataset version (also in the ``features`` artifact's metadata, with the lake URL).
    """
    import json
    import logging
    from pathlib import Path

    from hfcast.config import settings_from_param
    from hfcast.prepare import SynthRequest, prepare_data as prepare

    logging.basicConfig(level=logging.INFO)
    prepared = prepare(settings_from_param(settings), dvc_repo=dvc_repo,
                       synth=SynthRequest(synth_symbols, synth_days, synth_seed, synth_shift_day))
    features.metadata.update(prepared.to_dict())  # a pointer: the data stays in the lake
    Path(features.path).write_text(json.dumps({**prepared.to_dict(), "dates": prepared.dates}, indent=1))
    return prepared.dataset_version
