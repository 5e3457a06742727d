"""Operating it: a real `prefect server start`, deployments served by deployments/serve.py,
`minority-synth trigger ... --watch` from a subprocess, schedules, and the UI in headless Chromium."""

from __future__ import annotations

import json
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
    assert {"digits-report-table", "digits-report-link", "digits-summary", "digits-progress"} <= keys  # keys of the dataset


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
    # the report is readable from the UI itself: its markdown artifact carries the table and the images inline
    latest = httpx.post(f"{ops['api']}/artifacts/filter", json={"artifacts": {"key": {"any_": ["digits-report"]}}, "sort": "CREATED_DESC", "limit": 1},
                        timeout=10).json()[0]
    browser.get(f"{ui}/artifacts/artifact/{latest['id']}")
    body = wait_for_text(browser, "AvgkNN", timeout=90)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        inline = [img for img in browser.find_elements("css selector", "img") if (img.get_attribute("src") or "").startswith("data:image/png")]
        if inline and all(img.get_attribute("naturalWidth") not in (None, "0") for img in inline):
            break
        time.sleep(1)
    assert inline and all(img.get_attribute("naturalWidth") not in (None, "0") for img in inline), body[:500]
    browser.save_screenshot(str(tmp_path / "report-in-ui.png"))


# ---------------------------------------------------------------- work pool: deploy, a real worker, seeds, retries


def dataset_file(base: dict, folder: Path, name: str, root: Path, num_samples: int = 16, **changes) -> None:
    entry = {**base, "name": name, "output": str(root / "pool-runs" / name), "sampler": {"steps": 10},
             "run": {**base["run"], "num_samples": num_samples, "shard_size": 8, "workers": 1}, **changes}
    entry.pop("schedule", None)  # nothing scheduled: only the test's runs reach the worker
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(entry))


@pytest.fixture(scope="module")
def pool(ops):
    """`minority-synth deploy` of two datasets on a fresh work pool, and a real `prefect worker`
    for it started without any project setting (no MINORITY_* variable, outside the checkout)."""
    root = ops["root"]
    folder = root / "pool-datasets"
    folder.mkdir()
    base = yaml.safe_load((root / "datasets" / "digits.yaml").read_text())
    dataset_file(base, folder, "fresh", root)
    late_images = root / "late-images"  # the reference data arrives after the first attempt failed
    late_images.mkdir()
    dataset_file(base, folder, "late", root, num_samples=32, reference={"source": str(late_images), "extractor": "demo-classifier", "url": str(root / "late-reference")})
    doomed_images = root / "doomed-images"  # stays empty: every attempt of this dataset fails
    doomed_images.mkdir()
    dataset_file(base, folder, "doomed", root, reference={"source": str(doomed_images), "extractor": "demo-classifier", "url": str(root / "doomed-reference")})
    env = {**ops["env"], "MINORITY_DATASETS_DIR": str(folder)}
    hook = WebhookReceiver()
    make_block = ("from prefect.blocks.notifications import CustomWebhookNotificationBlock as B; "
                  f"B(name='ops', url='{hook.url}', json_data={{'text': '{{{{subject}}}}: {{{{body}}}}'}}).save('ops-alerts', overwrite=True)")
    block = subprocess.run([sys.executable, "-c", make_block], env=env, capture_output=True, text=True, timeout=120)
    assert block.returncode == 0, block.stderr
    deploy = [CLI, "deploy", "--pool", "minority-test", "--notify-block", "custom-webhook/ops-alerts"]
    deployed = [subprocess.run(deploy, env=env, capture_output=True, text=True, timeout=180) for _ in range(2)]
    worker_env = {k: v for k, v in ops["env"].items() if not k.startswith("MINORITY_")}
    worker_env["PREFECT_WORKER_QUERY_SECONDS"] = "2"
    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "minority-test"], env=worker_env, cwd=root,
                              stdout=open(ops["logs"] / "worker.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield {"env": env, "deployed": deployed, "late_images": late_images, "worker": worker, "root": root, "hook": hook}
    finally:
        stop(worker)
        hook.close()


class WebhookReceiver:
    """A real HTTP endpoint on loopback that keeps the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        import http.server
        import threading

        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def flow_run(api: str, run_id: str) -> dict:
    return httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()


def run_id_of(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith("flow run ")).split("(")[1].split(")")[0]


def output_of(stdout: str) -> Path:
    return Path(next(line for line in stdout.splitlines() if line.startswith("output: ")).split(": ", 1)[1])


def test_deploy_creates_the_pool_once_and_registers_every_dataset(ops, pool):
    first, again = pool["deployed"]
    assert first.returncode == 0, first.stdout + first.stderr
    assert "work pool minority-test (created)" in first.stdout and "work pool minority-test (exists)" in again.stdout
    registered = {f"{flow_name(ops['api'], d['flow_id'])}/{d['name']}": d for d in deployments(ops["api"]).values() if d.get("work_pool_name") == "minority-test"}
    assert set(registered) == {f"{flow}/{name}" for flow in ("synthesize", "build-reference", "score") for name in ("fresh", "late", "doomed")}
    assert "dataset:fresh" in registered["synthesize/fresh"]["tags"]


def test_a_worker_runs_triggered_runs_each_with_its_own_seed_and_folder(ops, pool):
    runs = [subprocess.run([CLI, "trigger", "fresh", "--watch", "--timeout", "600"], env=pool["env"], capture_output=True, text=True, timeout=700)
            for _ in range(2)]
    for proc in runs:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + (ops["logs"] / "worker.log").read_text()[-3000:]
    outs = [output_of(p.stdout) for p in runs]
    assert outs[0] != outs[1] and sorted(p.name for p in outs[0].parent.iterdir()) == sorted(p.name for p in outs)  # no other (empty) folder
    manifests = [json.loads((out / "manifest.json").read_text()) for out in outs]
    seeds = [m["config"]["seed"] for m in manifests]
    assert seeds[0] != seeds[1]
    first_shards = [(out / "samples" / "shard-00000.parquet").read_bytes() for out in outs]
    assert first_shards[0] != first_shards[1]
    for proc, out, seed in zip(runs, outs, seeds, strict=True):
        run = flow_run(ops["api"], run_id_of(proc.stdout))
        assert run["name"] == out.name and run["state_type"] == "COMPLETED"  # the UI's name is the folder's
        artifacts = httpx.post(f"{ops['api']}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}, timeout=10).json()
        keys = {a["key"] for a in artifacts}
        assert {"fresh-progress", "fresh-summary", "fresh-report", "fresh-report-link"} <= keys  # on the run that was triggered
        summary = next(a for a in artifacts if a["key"] == "fresh-summary")
        assert f"| seed | {seed} |" in summary["data"]
        task_runs = httpx.post(f"{ops['api']}/task_runs/filter", json={"flow_runs": {"id": {"any_": [run["id"]]}}}, timeout=10).json()
        names = {t["name"].rsplit("-", 1)[0] if t["name"].startswith(("score-shards", "arm-result")) else t["name"] for t in task_runs}
        assert {"lane-00", "score-shards", "arm-result"} <= names  # generation, scoring and the report are on the triggered run
        assert all("dataset:fresh" in t["tags"] and f"run:{out.name}" in t["tags"] for t in task_runs)


def test_a_retried_run_resumes_its_own_folder(ops, pool):
    proc = subprocess.run([CLI, "trigger", "late"], env=pool["env"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id, out = run_id_of(proc.stdout), output_of(proc.stdout)
    deadline = time.monotonic() + 600
    while flow_run(ops["api"], run_id)["state"]["name"] != "AwaitingRetry":  # attempt 1 generated, then found no reference images
        assert time.monotonic() < deadline and flow_run(ops["api"], run_id)["state_type"] not in ("COMPLETED", "FAILED", "CRASHED"), flow_run(ops["api"], run_id)["state"]
        time.sleep(1)
    generated_first = sorted(p.name for p in (out / "samples").iterdir())
    assert generated_first  # the first attempt's shards are committed in the folder fixed before it started
    import pyarrow.parquet as pq

    for shard in sorted((out / "samples").glob("*.parquet")):  # the real data arrives: these samples stand in for it
        for i, image in enumerate(pq.read_table(shard, columns=["image"]).column("image").to_pylist()):
            (pool["late_images"] / f"{shard.stem}-{i}.png").write_bytes(image["bytes"])
    while (run := flow_run(ops["api"], run_id))["state_type"] not in ("COMPLETED", "FAILED", "CRASHED"):
        assert time.monotonic() < deadline
        time.sleep(2)
    assert run["state_type"] == "COMPLETED" and run["run_count"] == 2, run["state"]
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # one folder for both attempts, no empty one
    assert (out / "report" / "index.html").is_file()
    summary = next(a for a in httpx.post(f"{ops['api']}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}, timeout=10).json()
                   if a["key"] == "late-summary")
    assert "(0 generated, 4 resumed)" in summary["data"]  # the second attempt kept every shard of the first


def test_a_run_that_fails_for_good_is_announced_through_a_notification_block(ops, pool):
    proc = subprocess.run([CLI, "trigger", "doomed"], env=pool["env"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id, out = run_id_of(proc.stdout), output_of(proc.stdout)
    deadline = time.monotonic() + 600
    while (run := flow_run(ops["api"], run_id))["state_type"] not in ("COMPLETED", "FAILED", "CRASHED"):
        assert time.monotonic() < deadline
        time.sleep(2)
    assert run["state_type"] == "FAILED" and run["run_count"] == 2  # retried once, then failed
    while not pool["hook"].received and time.monotonic() < deadline:
        time.sleep(1)
    texts = [m["text"] for m in pool["hook"].received]
    assert len(texts) == 1 and f"{out.name} failed" in texts[0] and "no images" in texts[0], texts  # once, after the retry, with the reason
