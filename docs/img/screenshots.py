"""Screenshots of a demo's report and MLflow pages for the docs (headless Debian chromium).

    hfcast demo --no-serve                 # writes .hfcast/demo
    python docs/img/screenshots.py .hfcast/demo docs/img

Writes ``report_live.png``, ``report_backtest.png`` (parts of ``<home>/report/index.html``),
``mlflow_run.png`` (the champion's training run), ``mlflow_model.png`` (the registered model's
versions), ``mlflow_version.png`` (the newest version, with the gate's decision) and
``mlflow_logged_model.png`` (the champion's logged model, linked to its run and versions), each a PNG
under 500 KB (palette-quantised). ``mlflow server`` runs on 127.0.0.1 over the demo's sqlite
file for the MLflow pages and is stopped at the end.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger("screenshots")
MAX_BYTES = 500 * 1024


def shoot(url: str, path: Path, width: int, height: int, wait_ms: int = 0, crop: tuple[int, int] | None = None) -> Path:
    """One headless chromium screenshot of ``url``, cropped to rows ``crop`` and palette-quantised."""
    from PIL import Image

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="chromium-")
    raw = Path(profile) / "shot.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={profile}", f"--screenshot={raw}", f"--window-size={width},{height}"]
    cmd += [f"--virtual-time-budget={wait_ms}"] if wait_ms else []
    try:
        subprocess.run([*cmd, url], check=True, timeout=180, capture_output=True, env={**os.environ, "HOME": profile})
        img = Image.open(raw).convert("RGB")
        if crop:
            img = img.crop((0, crop[0], width, min(crop[1], img.height)))
        for colors in (256, 128, 64):  # smallest palette that keeps the file under the limit
            img.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
            if path.stat().st_size <= MAX_BYTES:
                break
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    log.info("%s: %d KB", path, path.stat().st_size // 1024)
    return path


def report_section_rows(index: Path, width: int) -> dict[str, int]:
    """The vertical position (px) of each section heading, from the DOM chromium builds."""
    import json

    probe = index.parent / ".positions.html"
    probe.write_text(index.read_text().replace(
        "</body>", "<script>window.addEventListener('load',()=>{document.title=JSON.stringify(Object.fromEntries("
        "[...document.querySelectorAll('h2')].map(h=>[h.id,Math.round(h.getBoundingClientRect().top+window.scrollY)])))"
        "})</script></body>"))  # after the images loaded: their heights move the headings
    try:
        chromium = shutil.which("chromium") or "/usr/bin/chromium"
        profile = tempfile.mkdtemp(prefix="chromium-")
        dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                              f"--window-size={width},1000", "--dump-dom", probe.as_uri()], check=True, timeout=120,
                             capture_output=True, text=True, env={**os.environ, "HOME": profile}).stdout
        shutil.rmtree(profile, ignore_errors=True)
    finally:
        probe.unlink()
    title = dom.split("<title>", 1)[1].split("</title>", 1)[0].replace("&quot;", '"')
    return json.loads(title)


def mlflow_pages(home: Path, out: Path) -> list[Path]:
    from mlflow import MlflowClient

    from hfcast.testing.servers import MlflowServer

    work = Path(tempfile.mkdtemp(prefix="mlflow-shots-"))
    shutil.copy(home / "mlflow.db", work / "mlflow.db")  # the server migrates/locks its own copy
    shots = []
    with MlflowServer(work) as server:
        c = MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)
        champ = c.get_model_version_by_alias("hfcast", "champion")
        run = c.get_run(champ.run_id)
        latest = max(int(m.version) for m in c.search_model_versions("name='hfcast'"))
        base = server.uri
        shots.append(shoot(f"{base}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}",
                           out / "mlflow_run.png", 1400, 1300, wait_ms=15000))
        shots.append(shoot(f"{base}/#/models/hfcast", out / "mlflow_model.png", 1400, 1150, wait_ms=15000))
        shots.append(shoot(f"{base}/#/models/hfcast/versions/{latest}", out / "mlflow_version.png", 1400, 1100,
                           wait_ms=15000))
        logged = run.data.tags.get("hfcast.mlflow_model_id")  # hfcast.registry.PYFUNC_ID_TAG
        if logged:  # the champion's logged model: source run, commit, the versions registered from it
            shots.append(shoot(f"{base}/#/experiments/{run.info.experiment_id}/models/{logged}",
                               out / "mlflow_logged_model.png", 1400, 1100, wait_ms=15000))
    shutil.rmtree(work, ignore_errors=True)
    return shots


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("home", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    index = (args.home / "report" / "index.html").resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = report_section_rows(index, 1200)
    shoot(index.as_uri(), args.out / "report_live.png", 1200, rows["backtest"] + 200, crop=(0, rows["gate"]))
    shoot(index.as_uri(), args.out / "report_backtest.png", 1200, rows["scores"] + 200,
          crop=(rows["backtest"] - 10, rows["scores"]))
    mlflow_pages(args.home.resolve(), args.out)


if __name__ == "__main__":
    main()
