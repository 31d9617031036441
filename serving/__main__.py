"""``python -m serving``: the predictor image's entry point (KServe's parser, extended).

Example: ``python -m serving --http_port 8080 --model_ref hfcast@champion``
(or ``--bundle /mnt/models`` for a bundle the storage initializer already downloaded).

A registered version (``--model_ref``, what the generated InferenceServices run) is fetched in a
forked child started once the options are parsed, before torch, Feast and the predictor are
imported, as ``hfcast serve`` does (:func:`serving.cli.prefetch`; bench/bench_startup.py).
"""

from __future__ import annotations

import argparse

from serving.cli import prefetch


def _positive(kind):
    """An argparse type that refuses zero and negative values at start-up (``--max_batch -5``)."""
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    """KServe's model-server options and hfcast's (importing KServe: it parses ``sys.argv`` then)."""
    from kserve import model_server

    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.set_defaults(model_name="hfcast")
    parser.add_argument("--bundle", default=None, help="local Forecaster bundle folder (instead of the registry)")
    parser.add_argument("--model_ref", default="hfcast@champion", help="registry reference: NAME@ALIAS or NAME/VERSION")
    parser.add_argument("--runner", default="auto", help="auto | onnxruntime | torch | torch-compiled | tensorrt")
    parser.add_argument("--max_batch", type=_positive(int), default=1024, help="largest batch accepted (larger: HTTP 400)")
    parser.add_argument("--max_staleness_s", type=float, default=600.0,
                        help="oldest feature age accepted for symbol inputs, seconds (negative: no limit)")
    parser.add_argument("--max_body_mb", type=_positive(float), default=64.0,
                        help="largest request body in MiB (larger: HTTP 413, refused before parsing)")
    parser.add_argument("--no_feature_store", action="store_true", help="serve window inputs only")
    return parser


def main() -> None:
    from hfcast.config import get_settings
    from hfcast.errors import UserError

    args, _ = build_parser().parse_known_args()  # argparse exits 2 naming a bad option value
    try:  # the version is fetched in a forked child while torch, Feast and the predictor import
        fetching = None if args.bundle else prefetch(get_settings(), args.model_ref)
    except UserError:  # settings that do not load: the predictor's load says so, as before
        fetching = None
    from serving.core import Limits
    from serving.predictor import HfcastPredictor, serve

    limits = Limits(args.max_batch, None if args.max_staleness_s < 0 else args.max_staleness_s,
                    int(args.max_body_mb * 2**20))
    model = HfcastPredictor(args.model_name, bundle=args.bundle, ref=None if args.bundle else args.model_ref,
                            runner=args.runner, limits=limits, use_feature_store=not args.no_feature_store,
                            prefetch=fetching)
    serve(model, args.http_port, args.grpc_port, args.workers)


if __name__ == "__main__":
    import sys

    from hfcast.errors import explain

    try:
        main()
    except Exception as exc:  # a failure the operator can fix: its two lines in the pod's log, not a traceback
        err = explain(exc)
        if err is None:
            raise
        print("\n".join(err.lines()), file=sys.stderr)
        sys.exit(err.exit_code)
