"""Operating it: a real `prefect server start`, deployments served by deployments/serve.py,
`minority-synth trigger ... --watch` from a subprocess, schedules, and the UI in headless Chromium."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).with_name("minority-synth"))


def wait_healthy(api: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"Prefect server at {api} did not become healthy in {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    """Stop a process group by pid: SIGINT first (prefect ignores SIGTERM in places), then SIGKILL."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def ops(tmp_path_factory):
    """A Prefect server, a test dataset, and serve.py serving its deployments (all stopped by pid)."""
    root = tmp_path_factory.mktemp("ops")
    datasets = root / "datasets"
    datasets.mkdir()
    entry = yaml.safe_load((ROOT / "deployments" / "datasets" / "digits.yaml").read_text())
    entry["reference"]["url"] = str(root / "reference")
    entry["output"] = str(root / "runs")
    entry["run"].update(workers=1, shard_size=32)
    (datasets / "digits.yaml").write_text(yaml.safe_dump(entry))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        "MINORITY_DATASETS_DIR": str(datasets),
        "PREFECT_UI_API_URL": api,  # the UI's JavaScript calls this address (default :4200)
        "PREFECT_SERVER_UI_API_URL": api,
    }
    env.pop("PREFECT_API_URL", None)
    logs = root / "logs"
    logs.mkdir()
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=open(logs / "server.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    procs = [server]
    try:
        wait_healthy(api)
        client_env = {**env, "PREFECT_API_URL": api}
        serve = subprocess.Popen(
            [sys.executable, str(ROOT / "deployments" / "serve.py"), "--dataset", "digits", "--interval", "3600"],
            env=client_env, stdout=open(logs / "serve.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT,
        )
        procs.append(serve)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(deployments(api)) < 3:  # serve registers them one by one
            assert serve.poll() is None, (logs / "serve.log").read_text()[-3000:]
            time.sleep(2)
        yield {"api": api, "env": client_env, "root": root, "logs": logs}
    finally:
        for proc in reversed(procs):
            stop(proc)


def deployments(api: str) -> dict:
    response = httpx.post(f"{api}/deployments/filter", json={}, timeout=10)
    response.raise_for_status()
    return {d["name"] + "@" + d["flow_id"]: d for d in response.json()}


def flow_name(api: str, flow_id: str) -> str:
    return httpx.get(f"{api}/flows/{flow_id}", timeout=10).json()["name"]


@pytest.fixture(scope="module")
def triggered(ops):
    out = ops["root"] / "runs" / "triggered"
    proc = subprocess.run(
        [CLI, "trigger", "digits", "--num-samples", "64", "--out", str(out), "--watch", "--timeout", "900"],
        env=ops["env"], capture_output=True, text=True, timeout=1000,
    )
    return proc, out


def test_deployments_are_served_with_tags(ops):
    found = deployments(ops["api"]).values()
    names = {f"{flow_name(ops['api'], d['flow_id'])}/{d['name']}" for d in found}
    assert {"synthesize/digits", "build-reference/digits", "score/digits"} <= names
    synth = next(d for d in found if flow_name(ops["api"], d["flow_id"]) == "synthesize")
    assert "dataset:digits" in synth["tags"] and "model:bundled:digits" in synth["tags"]


def test_schedule_produces_a_scheduled_run(ops):
    deadline = time.monotonic() + 90
    scheduled = []
    while time.monotonic() < deadline and not scheduled:
        response = httpx.post(f"{ops['api']}/flow_runs/filter", json={"flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}, timeout=10)
        scheduled = response.json()
        time.sleep(3)
    assert scheduled, "the scheduler created no scheduled run for the synthesize deployment"
    assert all(run["state"]["type"] == "SCHEDULED" for run in scheduled)


def test_trigger_watch_completes_with_output_and_artifacts(ops, triggered):
    proc, out = triggered
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Completed" in proc.stdout and f"report: {out}/report/index.html" in proc.stdout
    assert (out / "manifest.json").is_file() and (out / "report" / "index.html").is_file()
    api = ops["api"]
    runs = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}, timeout=10).json()
    assert any(r["name"].startswith("digits-") for r in runs)
    task_runs = httpx.post(f"{api}/task_runs/filter", json={}, timeout=10).json()
    names = {t["name"] for t in task_runs}
    assert "lane-00" in names and not any(n.startswith("shard-") for n in names)  # one task run per worker lane, not per shard
    artifacts = httpx.post(f"{api}/artifacts/filter", json={}, timeout=10).json()
    keys = {a["key"] for a in artifacts}
    assert {"minority-report-table", "minority-report-link", "synthesis-summary-guided"} <= keys


def test_trigger_bad_input(ops, tmp_path):
    bad = subprocess.run([CLI, "trigger", "no-such-dataset"], env=ops["env"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown dataset 'no-such-dataset'" in bad.stderr
    down = subprocess.run([CLI, "trigger", "digits"], env={**ops["env"], "PREFECT_API_URL": "http://127.0.0.1:9/api"}, capture_output=True, text=True, timeout=60)
    assert down.returncode == 2 and "unreachable" in down.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: broken\nmodel: bundled:cats\nreference: {source: x, url: y}\noutput: z\n")
    invalid = subprocess.run([CLI, "datasets", "validate", str(broken)], capture_output=True, text=True, timeout=60)
    assert invalid.returncode == 2 and "unknown bundled model" in invalid.stderr and str(broken) in invalid.stderr


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium driven by Selenium (installed by .ci/run; skipped only if it cannot be)."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if os.geteuid() == 0 and shutil.which("apt-get"):
            subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver", shell=True, capture_output=True, timeout=900)
        if not (shutil.which("chromium") and shutil.which("chromedriver")):
            pytest.skip("Chromium could not be installed here (apt-get install chromium chromium-driver failed)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,1000", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def wait_for_text(driver, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        body = driver.find_element("tag name", "body").text
        if text in body:
            return body
        time.sleep(1)
    raise AssertionError(f"{text!r} not on the page after {timeout} s; page text: {body[:500]!r}")


def test_ui_and_report_in_a_real_browser(ops, triggered, browser, tmp_path):
    proc, out = triggered
    assert proc.returncode == 0
    run_id = next(line for line in proc.stdout.splitlines() if line.startswith("flow run ")).split("(")[1].split(")")[0]
    ui = ops["api"][: -len("/api")]
    browser.get(f"{ui}/runs/flow-run/{run_id}")
    body = wait_for_text(browser, "Completed", timeout=90)
    assert "digits-" in body
    browser.save_screenshot(str(tmp_path / "prefect-flow-run.png"))
    browser.get((out / "report" / "index.html").as_uri())
    body = wait_for_text(browser, "guided", timeout=30)
    assert "AvgkNN" in body
    assert len(browser.find_elements("css selector", "table tr")) >= 2
    images = browser.find_elements("css selector", "img")
    assert len(images) >= 3 and all(img.get_attribute("naturalWidth") not in (None, "0") for img in images)
    browser.save_screenshot(str(tmp_path / "report.png"))
    assert (tmp_path / "prefect-flow-run.png").stat().st_size > 10_000
