"""The deployment examples (cache_service/deploy/) and the Dockerfile agree with the code: every
probe or health check names a route the app serves, every CACHE_* variable is one the
settings read, and ports, data dir and user match the Dockerfile. Renaming a route, a setting
or the port without updating the examples fails here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from cache_service.app import create_app
from cache_service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "cache_service" / "deploy"
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _routes() -> set[str]:
    """The app's paths as its OpenAPI schema publishes them (FastAPI includes routers lazily,
    so `app.routes` does not list them). create_app only builds routers: the model and store
    load in the lifespan, which never runs here."""
    app = create_app(Settings(upstream_url="http://upstream.invalid/v1"))
    return set(app.openapi()["paths"])


ROUTES = _routes()


def _is_setting(env_name: str) -> bool:
    """A variable `serve` reads: CACHE_ + a settings field (nested ones with `__`), or one
    settings.py looks up by name itself (CACHE_CONFIG)."""
    source = (ROOT / "cache_service" / "settings.py").read_text()
    by_name = set(re.findall(r"environ\.get\(\"(CACHE_\w+)\"", source))
    if env_name in by_name:
        return True
    if not env_name.startswith("CACHE_"):
        return False
    top = env_name.removeprefix("CACHE_").split("__")[0].lower()
    return top in Settings.model_fields


def _dockerfile(pattern: str) -> str:
    m = re.search(pattern, DOCKERFILE, re.MULTILINE)
    assert m, f"Dockerfile has no match for {pattern!r}"
    return m.group(1)


PORT = int(_dockerfile(r"^EXPOSE (\d+)"))
DATA_DIR = _dockerfile(r"CACHE_DATA_DIR=(\S+)")
UID = int(_dockerfile(r"useradd .*--uid (\d+)"))


def _env_names(env: list[dict[str, Any]] | dict[str, Any]) -> set[str]:
    return set(env) if isinstance(env, dict) else {e["name"] for e in env}


def test_the_checks_can_fail() -> None:
    assert not _is_setting("CACHE_REDIS_URI")
    assert not _is_setting("REDIS_URL")
    assert _is_setting("CACHE_ALERTS__WEBHOOK_URL")
    assert "/healthz" in ROUTES and "/healthzz" not in ROUTES


def test_dockerfile_agrees_with_itself_and_the_app() -> None:
    assert int(_dockerfile(r"CACHE_PORT=(\d+)")) == PORT
    assert _dockerfile(r"^VOLUME \[\"([^\"]+)\"\]") == DATA_DIR
    health = _dockerfile(r"^HEALTHCHECK(?:.*\n)*?.*?/(\w+)'")
    assert f"/{health}" in ROUTES
    for env_name in re.findall(r"\b(CACHE_\w+)=", DOCKERFILE):
        assert _is_setting(env_name), env_name


# --- Kubernetes


def _pod_spec() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()) if d]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def _container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    containers: list[dict[str, Any]] = spec["containers"]
    (c,) = [c for c in containers if c["name"] == name]
    return c


def test_kubernetes_probes_name_routes_on_the_sidecars_port() -> None:
    sidecar = _container(_pod_spec(), "cache-sidecar")
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert list(ports.values()) == [PORT]
    probes = {k: sidecar[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    for kind, get in probes.items():
        assert get["path"] in ROUTES, kind
        assert ports.get(get["port"], get["port"]) == PORT, kind
    # Alive and ready are different questions: the index may still be rebuilding.
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"


def test_kubernetes_env_are_settings_and_the_admin_key_is_a_secret() -> None:
    spec = _pod_spec()
    sidecar = _container(spec, "cache-sidecar")
    for name in _env_names(sidecar["env"]):
        assert _is_setting(name), name
    (admin,) = [e for e in sidecar["env"] if e["name"] == "CACHE_ADMIN_KEY"]
    assert "secretKeyRef" in admin["valueFrom"]
    assert [m["mountPath"] for m in sidecar["volumeMounts"]] == [DATA_DIR]
    assert spec["securityContext"]["runAsUser"] == UID


def test_kubernetes_app_calls_the_sidecar() -> None:
    app = _container(_pod_spec(), "app")
    (base,) = [e["value"] for e in app["env"] if e["name"] == "OPENAI_BASE_URL"]
    url = urlsplit(base)
    assert (url.hostname, url.port) == ("127.0.0.1", PORT)
    assert f"{url.path}/chat/completions" in ROUTES


# --- Compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())[
        "services"
    ]
    return services


def test_compose_sidecar_settings_and_build(compose: dict[str, Any]) -> None:
    sidecar = compose["sidecar"]
    for name in _env_names(sidecar["environment"]):
        assert _is_setting(name), name
    assert urlsplit(sidecar["environment"]["CACHE_REDIS_URL"]).hostname == "redis"
    assert (DEPLOY / sidecar["build"]["context"] / sidecar["build"]["dockerfile"]).resolve() == (
        ROOT / "Dockerfile"
    )
    assert [v.split(":")[1] for v in sidecar["volumes"]] == [DATA_DIR]
    assert sidecar["expose"] == [str(PORT)]


def test_compose_app_calls_the_sidecar(compose: dict[str, Any]) -> None:
    url = urlsplit(compose["app"]["environment"]["OPENAI_BASE_URL"])
    assert url.hostname == "sidecar" and url.port == PORT
    assert f"{url.path}/chat/completions" in ROUTES
    assert compose["app"]["depends_on"]["sidecar"]["condition"] == "service_healthy"


def test_compose_redis_persists(compose: dict[str, Any]) -> None:
    command = " ".join(compose["redis"]["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
