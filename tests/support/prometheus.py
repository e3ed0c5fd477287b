"""Reading a daemon's /metrics as Prometheus would, and checking it with promtool."""

import asyncio
import shutil
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]


def promtool() -> str:
    """The promtool binary (Debian's prometheus package; lab/debian-packages.sh installs it)."""
    found = shutil.which("promtool") or shutil.which("promtool", path="/usr/bin")
    if found is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return found


def check_metrics(text: str) -> None:
    """`promtool check metrics`: the exposition parses and follows Prometheus naming."""
    run = subprocess.run([promtool(), "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert run.returncode == 0, (run.stdout + run.stderr).decode(errors="replace")


async def scrape(url: str) -> str:
    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    return await asyncio.to_thread(get)


def samples(text: str) -> dict[str, dict[Labels, float]]:
    """Sample name (with its _total/_bucket/... suffix) -> labels -> value."""
    found: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return found


def value(found: dict[str, dict[Labels, float]], name: str, **labels: str) -> float | None:
    return found.get(name, {}).get(frozenset(labels.items()))
