"""compose.yaml, nats.conf, the Dockerfile and the Prometheus and Grafana files parse and agree with each
other and with the code."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from hub.embedded import EmbeddedNats
from hub.embedded.process import find_binary
from hub.embedded.servers import _scripts_dir
from tests.promtool import promtool

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


# -- Prometheus and Grafana (issue #17) ---------------------------------------------------------------------


def _bind_mounts(service: dict) -> list[tuple[str, str, str]]:  # type: ignore[type-arg]
    """(source, target, options) of each bind mount (a source starting with ./) of ``service``."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target, *options = volume.split(":")
        if source.startswith("./"):
            mounts.append((source, target, ",".join(options)))
    return mounts


def _hub_nodes(services: dict) -> dict[str, dict]:  # type: ignore[type-arg]
    return {name: s for name, s in services.items() if s.get("command", [])[:2] == ["tickstock", "serve"]}


def test_every_mounted_file_exists_and_observability_mounts_are_read_only() -> None:
    services = _compose()["services"]
    assert {"prometheus", "grafana", "hub", "hub-2"} <= set(services)
    for name, service in services.items():
        for source, target, options in _bind_mounts(service):
            assert (ROOT / source).exists(), (name, source)
            assert (ROOT / source).is_dir() == (not Path(target).suffix), (name, source, target)
            if name in ("prometheus", "grafana"):
                assert options == "ro", (name, source)


def test_observability_images_are_pinned() -> None:
    services = _compose()["services"]
    for name in ("prometheus", "grafana"):
        tag = services[name]["image"].partition(":")[2]
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), (name, services[name]["image"])


def test_prometheus_config_is_valid_and_loads_the_rules() -> None:
    result = promtool("check", "config", ROOT / "ops" / "prometheus" / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    prometheus = _compose()["services"]["prometheus"]
    targets = {target: source for source, target, _ in _bind_mounts(prometheus)}
    (flag,) = [arg for arg in prometheus["command"] if arg.startswith("--config.file=")]
    config_path = Path(flag.removeprefix("--config.file="))
    assert targets[str(config_path)] == "./ops/prometheus/prometheus.yml"
    config = yaml.safe_load((ROOT / targets[str(config_path)]).read_text())
    for rule_file in config["rule_files"]:  # relative to the config file, on both sides of the mount
        assert targets[str(config_path.parent / rule_file)] == f"./ops/prometheus/{rule_file}"


def test_prometheus_scrapes_every_hub_node() -> None:
    services = _compose()["services"]
    nodes = _hub_nodes(services)
    assert set(nodes) == {"hub", "hub-2"}
    config = yaml.safe_load((ROOT / "ops" / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "tickstock-hub"]
    assert job["metrics_path"] == "/metrics"
    (sd,) = job["dns_sd_configs"]
    assert set(sd["names"]) == set(nodes)
    for node in nodes.values():
        command = node["command"]
        assert int(command[command.index("--port") + 1]) == sd["port"]
        assert command[command.index("--host") + 1] == "0.0.0.0"
    assert nodes["hub-2"]["environment"] == nodes["hub"]["environment"]


def test_grafana_provisions_the_prometheus_datasource_and_the_dashboards() -> None:
    services = _compose()["services"]
    grafana = services["grafana"]
    targets = {target: source for source, target, _ in _bind_mounts(grafana)}
    provisioning = ROOT / targets["/etc/grafana/provisioning"]
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    url = urlsplit(datasource["url"])
    assert (url.hostname, url.port) == ("prometheus", 9090)
    assert "127.0.0.1:9090:9090" in services["prometheus"]["ports"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "tickstock.yml").read_text())["providers"]
    dashboards = ROOT / targets[provider["options"]["path"]]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dashboards / Path(home).relative_to(provider["options"]["path"])).is_file()
    files = sorted(dashboards.glob("*.json"))
    assert files
    for path in files:
        dashboard = json.loads(path.read_text())
        panels = [p for p in dashboard["panels"] if p["type"] != "row"]
        assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"]), path
        variables = {v["name"] for v in dashboard["templating"]["list"]}
        for panel in panels:
            assert panel["datasource"]["uid"] == datasource["uid"], (path.name, panel["title"])
            assert panel["targets"], (path.name, panel["title"])
        repeated = [p for p in dashboard["panels"] if p["type"] == "row" and p.get("repeat")]
        assert [r["repeat"] for r in repeated] == ["instance"] and "instance" in variables
