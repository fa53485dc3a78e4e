"""compose.yaml, nats.conf, the Dockerfile and the Prometheus and Grafana files parse and agree with each
other and with the code."""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from api.settings import Settings
from hub.embedded import EmbeddedNats
from hub.embedded.credentials import NATS_USERS
from hub.embedded.process import find_binary
from hub.embedded.servers import _scripts_dir
from tests.promtool import promtool

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


_VARIABLE = re.compile(r"\$\{(\w+)(?::?[?-]([^}]*))?\}")
NATS_NODES = ("nats-1", "nats-2", "nats-3")


def _dummy(name: str) -> str:
    """A stand-in secret for ``name``, in the alphabet the stack documents (letters and digits)."""
    return "k" + re.sub(r"[^a-z0-9]", "", name.lower())


def _interpolate(value: str) -> str:
    """``value`` as compose would pass it: a dummy secret for each required variable, the default of
    each optional one (``${NAME:-default}``)."""

    def one(match: re.Match[str]) -> str:
        return match[2] if f"{match[1]}:-" in match[0] else _dummy(match[1])

    return _VARIABLE.sub(one, value).replace("$$", "$")


def _environment(service: dict) -> dict[str, str]:  # type: ignore[type-arg]
    return {k: _interpolate(str(v)) for k, v in service.get("environment", {}).items()}


def _etc_nats(service: dict, folder: Path) -> Path:  # type: ignore[type-arg]
    """The files a NATS service sees under /etc/nats, copied from its bind mounts into ``folder``."""
    for source, target, _ in _bind_mounts(service):
        if target.startswith("/etc/nats/"):
            (folder / Path(target).name).write_text((ROOT / source).read_text())
    return folder / "nats.conf"


def test_nats_conf_is_valid_for_the_shipped_server_on_every_node(tmp_path: Path) -> None:
    binary = find_binary("nats-server", [_scripts_dir() / "nats-server"])
    services = _compose()["services"]
    for name in NATS_NODES:
        folder = tmp_path / name
        folder.mkdir()
        conf = _etc_nats(services[name], folder)
        env = {"PATH": "/usr/bin:/bin", **_environment(services[name])}
        result = subprocess.run([str(binary), "-c", str(conf), "-t"], capture_output=True, text=True, env=env)
        assert result.returncode == 0, (name, result.stderr)
        assert "is valid" in result.stderr + result.stdout
        # An unset secret stops the server (compose's ${…:?} stops the stack earlier).
        env.pop("TICKSTOCK_NATS_READER_PASSWORD")
        result = subprocess.run([str(binary), "-c", str(conf), "-t"], capture_output=True, text=True, env=env)
        assert result.returncode != 0 and "TICKSTOCK_NATS_READER_PASSWORD" in result.stderr


def test_nats_conf_enables_jetstream_and_matches_the_embedded_payload_limit(tmp_path: Path) -> None:
    conf = (ROOT / "nats.conf").read_text()
    assert re.search(r"^jetstream\s*\{", conf, re.M)
    max_payload = re.search(r"^max_payload:\s*(\S+)", conf, re.M)
    assert max_payload and max_payload[1] == EmbeddedNats(tmp_path).max_payload
    assert re.search(r'^include "nats-accounts.conf"', conf, re.M)


def test_hub_urls_point_at_compose_services() -> None:
    services = _compose()["services"]
    assert {"postgres", *NATS_NODES, "redis", "migrate", "hub", "hub-2", "lb"} <= set(services)
    env = _environment(services["hub"])
    assert services["migrate"]["environment"] == services["hub"]["environment"]
    settings = Settings.from_env(env)  # every hub variable parses, the NATS server list included
    assert settings.embedded == ()
    for var, service, port, secret in [
        ("TICKSTOCK_DATABASE_URL", "postgres", 5432, "TICKSTOCK_DB_PASSWORD"),
        ("TICKSTOCK_REDIS_URL", "redis", 6379, "TICKSTOCK_REDIS_PASSWORD"),
    ]:
        url = urlsplit(env[var])
        assert (url.hostname, url.port, url.password) == (service, port, _dummy(secret)), var
    nats_urls = [urlsplit(url) for url in settings.nats_servers]
    assert [(u.hostname, u.port) for u in nats_urls] == [(n, 4222) for n in NATS_NODES]
    assert {(u.username, u.password) for u in nats_urls} == {("hub", _dummy("TICKSTOCK_NATS_HUB_PASSWORD"))}
    conf = (ROOT / "nats.conf").read_text()
    assert re.search(r'^listen:\s*"0\.0\.0\.0:4222"', conf, re.M)
    assert "timescaledb" in services["postgres"]["image"]


def test_the_nats_nodes_form_one_cluster_each_with_its_own_store() -> None:
    compose = _compose()
    services = compose["services"]
    conf = (ROOT / "nats.conf").read_text()
    cluster = re.search(r"^cluster \{(.*?)^\}", conf, re.S | re.M)
    assert cluster
    route_port = int(re.search(r'listen:\s*"0\.0\.0\.0:(\d+)"', cluster[1])[1])  # type: ignore[index]
    referenced = re.findall(r"\$(TICKSTOCK_NATS_ROUTE_\d)\b", cluster[1])
    assert referenced == ["TICKSTOCK_NATS_ROUTE_1", "TICKSTOCK_NATS_ROUTE_2", "TICKSTOCK_NATS_ROUTE_3"]
    assert re.search(r"user: route\s+password: \$TICKSTOCK_NATS_ROUTE_PASSWORD", cluster[1])
    stores = set()
    for name in NATS_NODES:
        node = services[name]
        env = _environment(node)
        assert env["TICKSTOCK_NATS_SERVER_NAME"] == name
        routes = [urlsplit(env[var]) for var in referenced]
        assert [(r.scheme, r.hostname, r.port) for r in routes] == [
            ("nats-route", n, route_port) for n in NATS_NODES
        ]
        assert {(r.username, r.password) for r in routes} == {("route", env["TICKSTOCK_NATS_ROUTE_PASSWORD"])}
        assert node["command"] == ["-c", "/etc/nats/nats.conf"]
        (store,) = [v.split(":")[0] for v in node["volumes"] if v.endswith(":/data/jetstream")]
        stores.add(store)
        assert store in compose["volumes"]
        assert node["healthcheck"] == services["nats-1"]["healthcheck"]
        assert {s for s, *_ in _bind_mounts(node)} == {"./nats.conf", "./hub/embedded/nats-accounts.conf"}
    assert len(stores) == 3
    store_dir = re.search(r'store_dir:\s*"([^"]+)"', conf)
    assert store_dir and store_dir[1] == "/data/jetstream"
    for hub in _hub_nodes(services).values():
        assert set(NATS_NODES) <= set(hub["depends_on"])


def test_redis_and_postgres_require_their_passwords() -> None:
    services = _compose()["services"]
    redis = services["redis"]
    assert '--requirepass "$$REDIS_PASSWORD"' in redis["command"][-1]
    assert redis["environment"]["REDIS_PASSWORD"].startswith("${TICKSTOCK_REDIS_PASSWORD:?")
    assert "REDISCLI_AUTH" in redis["healthcheck"]["test"][-1]
    postgres = services["postgres"]["environment"]
    assert postgres["POSTGRES_HOST_AUTH_METHOD"] == "scram-sha-256"
    assert set(postgres["POSTGRES_INITDB_ARGS"].split()) == {
        "--auth-host=scram-sha-256",
        "--auth-local=scram-sha-256",
    }


def test_every_secret_is_required_and_named_in_the_env_example() -> None:
    text = (ROOT / "compose.yaml").read_text()
    variables = {m[1] for m in _VARIABLE.finditer(text)}
    required = {m[1] for m in _VARIABLE.finditer(text) if m[0].startswith(f"${{{m[1]}:?")}
    lines = [line for line in (ROOT / ".env.example").read_text().splitlines() if line and line[0] != "#"]
    assert {line.split("=", 1)[0] for line in lines} == variables
    assert all(line.endswith("=") for line in lines), "no value belongs in .env.example"
    assert {
        "TICKSTOCK_DB_PASSWORD",
        "TICKSTOCK_REDIS_PASSWORD",
        "TICKSTOCK_NATS_HUB_PASSWORD",
        "TICKSTOCK_NATS_PRODUCER_PASSWORD",
        "TICKSTOCK_NATS_READER_PASSWORD",
        "TICKSTOCK_NATS_ROUTE_PASSWORD",
    } <= required
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def test_the_load_balancer_passes_websockets_to_every_hub_node() -> None:
    compose = _compose()
    services = compose["services"]
    lb = services["lb"]
    assert lb["image"].startswith("nginx:")
    (config,) = [s for s, t, _ in _bind_mounts(lb) if t == "/etc/nginx/nginx.conf"]
    nginx = (ROOT / config).read_text()
    nodes = _hub_nodes(services)
    upstream = re.search(r"upstream hub \{(.*?)\}", nginx, re.S)
    assert upstream
    servers = set(re.findall(r"^\s*server\s+([\w-]+):(\d+)", upstream[1], re.M))
    assert servers == {
        (name, node["command"][node["command"].index("--port") + 1]) for name, node in nodes.items()
    }
    location = re.search(r"location / \{(.*?)\}", nginx, re.S)
    assert location
    lines = (line.split("#")[0].strip() for line in location[1].splitlines())
    directives = {tuple(d.rstrip(";").split(None, 1)) for d in lines if d}
    assert ("proxy_pass", "http://hub") in directives
    assert ("proxy_http_version", "1.1") in directives  # a websocket upgrade needs HTTP/1.1 upstream
    assert ("proxy_set_header", "Upgrade $http_upgrade") in directives
    assert ("proxy_set_header", "Connection $connection_upgrade") in directives
    assert re.search(r"map \$http_upgrade \$connection_upgrade \{\s*default\s+upgrade;", nginx)
    assert ("proxy_set_header", "X-Forwarded-For $remote_addr") in directives  # replaced, never appended
    listen = re.search(r"listen (\d+);", nginx)
    assert listen and lb["ports"] == [f"127.0.0.1:8000:{listen[1]}"]
    for node in nodes.values():
        assert "ports" not in node  # the way in is the load balancer
    # The hubs believe forwarded headers from the load balancer's fixed address only.
    address = lb["networks"]["default"]["ipv4_address"]
    assert services["hub"]["environment"]["TICKSTOCK_FORWARDED_ALLOW_IPS"] == address
    (subnet,) = [c["subnet"] for c in compose["networks"]["default"]["ipam"]["config"]]
    assert ipaddress.ip_address(address) in ipaddress.ip_network(subnet)


def test_the_nats_users_are_the_embedded_ones_with_their_permissions() -> None:
    accounts = (ROOT / "hub" / "embedded" / "nats-accounts.conf").read_text()
    assert re.findall(r"user:\s*(\w+)", accounts) == list(NATS_USERS)
    passwords = re.findall(r"password:\s*([^\s}]+)", accounts)
    assert passwords == [f"${var}" for var in NATS_USERS.values()]
    producer = accounts[accounts.index("user: producer") : accounts.index("user: reader")]
    assert re.findall(r"publish:\s*\{allow:\s*\[([^\]]*)\]", producer) == ['"tickstock.ingest.>"']
    reader = accounts[accounts.index("user: reader") :]
    assert "tickstock.ingest" not in reader
    for subject in re.findall(r'"(\$JS[^"]+)"', reader):
        assert "TICKSTOCK_PATTERNS" in subject or subject in ("$JS.API.INFO", "$JS.API.STREAM.NAMES"), subject


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
        for match in re.finditer(r"://([^\s/@]*)@", line):  # credentials in a URL come from a variable
            assert re.fullmatch(r"\w*:\$\{\w+:\?[^}]*\}", match[1]), line
    for path in ("ops/lb/nginx.conf", "nats.conf", "hub/embedded/nats-accounts.conf"):
        assert not re.search(r"password:\s*[^$\s]", (ROOT / path).read_text()), path


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
