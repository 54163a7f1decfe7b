"""Debian's ``prometheus`` package in tests: the real ``prometheus`` server and ``promtool``.

``.ci/run`` installs the package (``apt-get install prometheus``) and sets
``CRM_TEST_REQUIRE_PROMETHEUS=1``, so in CI a missing binary fails the tests that need it;
elsewhere they are skipped with the reason (shown by ``pytest -ra``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

INSTALL_HINT = (
    "Debian's prometheus package provides it: apt-get install --no-install-recommends prometheus "
    "(.ci/run installs it)"
)


def require_binary(name: str) -> str:
    """The path of ``name`` (prometheus or promtool); skips the test without it, or fails it
    when CRM_TEST_REQUIRE_PROMETHEUS is set (CI)."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed. {INSTALL_HINT}"
    if os.environ.get("CRM_TEST_REQUIRE_PROMETHEUS"):
        pytest.fail(message)
    pytest.skip(message)


def chart_rule_groups(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rule groups of the chart's PrometheusRule, as a Prometheus rule file holds them."""
    rules = [m for m in manifests if m["kind"] == "PrometheusRule"]
    assert len(rules) == 1, [m["kind"] for m in manifests]
    groups: list[dict[str, Any]] = rules[0]["spec"]["groups"]
    return groups


def write_rule_file(groups: list[dict[str, Any]], path: Path) -> Path:
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


class PrometheusServer:
    """A ``prometheus`` process on a loopback port with its own config and storage directory."""

    def __init__(self, config: dict[str, Any], workdir: Path, port: int) -> None:
        self.binary = require_binary("prometheus")
        self.workdir = workdir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited {self.proc.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready in {timeout}s: {self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns ``data`` (raises with Prometheus' error otherwise)."""
        query = urllib.parse.urlencode(params)
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(
        self, expr: str, start: float, end: float, step: float = 1.0
    ) -> list[dict[str, Any]]:
        data = self.api("query_range", query=expr, start=str(start), end=str(end), step=str(step))
        result: list[dict[str, Any]] = data["result"]
        return result

    def scalar(self, expr: str) -> float:
        """The value of a query that returns one series, NaN when it returns none."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else math.nan

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def numbers(result: list[dict[str, Any]]) -> list[float]:
    """Every sample value of a query_range result that is a number (NaN and infinities are not
    something a panel can draw)."""
    values = [float(v) for series in result for _, v in series["values"]]
    return [v for v in values if math.isfinite(v)]
