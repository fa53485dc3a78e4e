"""compose.yaml, nats.conf and the Dockerfile parse and agree with each other and with the code."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from hub.embedded import EmbeddedNats
from hub.embedded.process import find_binary
from hub.embedded.servers import _scripts_dir

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_nats_conf_is_valid_for_the_shipped_server() -> None:
    binary = find_binary("nats-server", [_scripts_dir() / "nats-server"])
    result = subprocess.run(
        [str(binary), "-c", str(ROOT / "nats.conf"), "-t"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stderr + result.stdout


def test_nats_conf_enables_jetstream_and_matches_the_embedded_payload_limit(tmp_path: Path) -> None:
    conf = (ROOT / "nats.conf").read_text()
    assert re.search(r"^jetstream\s*\{", conf, re.M)
    max_payload = re.search(r"^max_payload:\s*(\S+)", conf, re.M)
    assert max_payload and max_payload[1] == EmbeddedNats(tmp_path).max_payload


def test_hub_urls_point_at_compose_services() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"postgres", "nats", "redis", "migrate", "hub"} <= set(services)
    env = services["hub"]["environment"]
    assert services["migrate"]["environment"] == env
    for var, service, port in [
        ("TICKSTOCK_DATABASE_URL", "postgres", 5432),
        ("TICKSTOCK_NATS_URL", "nats", 4222),
        ("TICKSTOCK_REDIS_URL", "redis", 6379),
    ]:
        url = urlsplit(env[var].replace("${TICKSTOCK_DB_PASSWORD:?set TICKSTOCK_DB_PASSWORD}", "pw"))
        assert (url.hostname, url.port) == (service, port), var
    conf = (ROOT / "nats.conf").read_text()
    assert re.search(r'^listen:\s*"0\.0\.0\.0:4222"', conf, re.M)
    assert "timescaledb" in services["postgres"]["image"]


def test_nats_service_mounts_the_repository_config() -> None:
    nats = _compose()["services"]["nats"]
    assert "./nats.conf:/etc/nats/nats.conf:ro" in nats["volumes"]
    assert nats["command"] == ["-c", "/etc/nats/nats.conf"]
    store_dir = re.search(r'store_dir:\s*"([^"]+)"', (ROOT / "nats.conf").read_text())
    assert store_dir and any(v.endswith(":" + store_dir[1]) for v in nats["volumes"])


def test_hub_runs_serve_and_migrate_runs_first() -> None:
    services = _compose()["services"]
    assert services["hub"]["command"][:2] == ["tickstock", "serve"]
    assert services["hub"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["command"] == ["tickstock", "load-reference-data"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'CMD ["tickstock", "serve"' in dockerfile
    assert all(f"COPY {pkg} ./{pkg}" in dockerfile for pkg in ("hub", "api", "store"))


def test_no_secret_is_written_in_the_stack() -> None:
    text = (ROOT / "compose.yaml").read_text()
    for line in text.splitlines():
        if re.search(r"(PASSWORD|SECRET)\s*:", line):
            assert "${" in line, line
