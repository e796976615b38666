"""The `k8s_cluster` fixture kr8s's published tests expect, for an existing cluster.

Upstream, kr8s's repository-level conftest.py (not shipped in the wheel) makes the fixture with
pytest-kind's KindCluster: `kubeconfig_path`, `kubectl_path` and `kubectl(*args) -> stdout`, and
exports KUBECONFIG for the session. This plugin gives the same shape for the cluster that
`cargo xtask conformance` brought up (or any kubeconfig), read from the environment:

    SKIFF_CONFORMANCE_KUBECONFIG  the cluster's kubeconfig
    SKIFF_CONFORMANCE_KUBECTL     the kubectl to run

It also provides `ensure_gc`, the other fixture of that conftest.py, and writes each test's
outcome with a one-line cause to SKIFF_CONFORMANCE_RESULTS (JSON) for `cargo xtask conformance`
to count and classify. It is loaded with `-p skiff_kr8s`; the tests themselves are run as
published.
"""

import gc
import json
import os
import subprocess
import time
from pathlib import Path

import pytest


class Cluster:
    """What pytest-kind's KindCluster offers the tests, for an existing cluster."""

    def __init__(self, kubeconfig: Path, kubectl: Path):
        self.kubeconfig_path = kubeconfig
        self.kubectl_path = kubectl

    def kubectl(self, *args: str, **kwargs) -> str:
        return subprocess.check_output(
            [str(self.kubectl_path), *args],
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig_path)},
            encoding="utf-8",
            **kwargs,
        )


@pytest.fixture
def ensure_gc():
    gc.collect()
    yield
    gc.collect()


@pytest.fixture(scope="session", autouse=True)
def k8s_cluster():
    cluster = Cluster(
        Path(os.environ["SKIFF_CONFORMANCE_KUBECONFIG"]),
        Path(os.environ["SKIFF_CONFORMANCE_KUBECTL"]),
    )
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig_path)
    # As upstream: the default ServiceAccount must exist before the tests start. Bounded, so a
    # cluster without one fails the session with a message instead of hanging.
    deadline = time.monotonic() + 60
    while True:
        try:
            cluster.kubectl("get", "serviceaccount", "default", stderr=subprocess.STDOUT)
            break
        except subprocess.CalledProcessError as e:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no default ServiceAccount after 60 s: {e.output}") from e
            time.sleep(1)
    yield cluster
    del os.environ["KUBECONFIG"]


# nodeid -> {"outcome": passed|failed|error|skipped|xfailed, "message": one line}
_results = {}


def _one_line(report) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr or "")
    line = next((l.strip() for l in text.splitlines() if l.strip()), "")
    return line[:300]


def pytest_runtest_logreport(report):
    result = _results.setdefault(report.nodeid, {"outcome": "passed", "message": ""})
    if result["outcome"] in ("failed", "error"):
        return  # the first failure is the cause; a teardown error after it adds nothing
    if report.when == "call":
        if hasattr(report, "wasxfail"):
            result["outcome"] = "xfailed" if report.skipped else "failed"
            result["message"] = report.wasxfail if report.skipped else "XPASS(strict)"
        elif report.failed:
            result.update(outcome="failed", message=_one_line(report))
        elif report.skipped:
            result.update(outcome="skipped", message=_one_line(report))
    elif report.failed:  # setup or teardown
        result.update(outcome="error", message=f"{report.when}: {_one_line(report)}")
    elif report.skipped and report.when == "setup":
        result.update(outcome="skipped", message=_one_line(report))


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("SKIFF_CONFORMANCE_RESULTS")
    if path:
        with open(path, "w") as f:
            json.dump(_results, f, indent=1, sort_keys=True)
