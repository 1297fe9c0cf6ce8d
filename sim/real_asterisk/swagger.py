"""Record the ARI swagger a running real Asterisk serves: resources.json and every api-docs file it lists."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from sim.real_asterisk.install import RealAsteriskUnavailable
from sim.real_asterisk.process import RealAsterisk

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
# Asterisk writes the requesting host into basePath; the fixture keeps the stock one so that a re-recording on
# another port changes nothing.
BASE_PATH = "http://localhost:8088/ari"


def upstream_version(version: str) -> str:
    """'22.10.1' of '22.10.1+dfsg+~cs6.17.60671434-1'."""
    found = re.match(r"\d+\.\d+\.\d+", version)
    if not found:
        raise RealAsteriskUnavailable(f"cannot read a version number in {version!r}")
    return found.group(0)


def record_swagger(ast: RealAsterisk, out: Path | None = None) -> Path:
    """Write the swagger to `out` (default tests/fixtures/ari-api-docs-<version>/); return the folder."""
    out = out or FIXTURES / f"ari-api-docs-{upstream_version(ast.version)}"
    resources = _get(ast, "/api-docs/resources.json")
    docs = {}
    for api in resources["apis"]:
        name = api["path"].rsplit("/", 1)[1].replace("{format}", "json")
        docs[name] = _get(ast, f"/api-docs/{name}")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "api-docs").mkdir(parents=True)
    _write(tmp / "resources.json", resources)
    for name, doc in docs.items():
        _write(tmp / "api-docs" / name, doc)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _get(ast: RealAsterisk, path: str) -> dict:
    status, body = ast.ari("GET", path, timeout=10)
    if status != 200 or not isinstance(body, dict):
        raise RealAsteriskUnavailable(f"GET {ast.ari_url}/ari{path} answered {status}")
    return body


def _write(path: Path, doc: dict) -> None:
    if "basePath" in doc:
        doc["basePath"] = BASE_PATH
    path.write_text(json.dumps(doc, indent="\t", ensure_ascii=False) + "\n")
