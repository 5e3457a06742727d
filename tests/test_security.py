"""Security: weights-only loading, credentials never stored by Prefect, loopback binding, output roots."""

from __future__ import annotations

import asyncio
import json
import os
import pickle

import pytest
import torch

from minority_core.config import STORAGE_OPTIONS_ENV, SynthesisConfig
from minority_core.io import ShardStore

FAKE_SECRET = "FAKE-SECRET-d41d8cd98f00b204"


class Evil:
    """Unpickling this runs code: a loader that is not weights-only would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_adm_checkpoint_with_code_is_refused(tmp_path):
    from minority_core.models import load_model

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": Evil(str(marker))}, path)
    with pytest.raises(ValueError, match="weights-only"):
        load_model(f"adm:{path}", preset="celeba64")
    assert not marker.exists()


def test_diffusers_bin_with_code_is_refused(tiny_diffusers_model, tmp_path):
    import shutil

    from minority_core.models import load_model

    folder = tmp_path / "m"
    shutil.copytree(tiny_diffusers_model, folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    marker = tmp_path / "pwned"
    with open(folder / "unet" / "diffusion_pytorch_model.bin", "wb") as handle:
        pickle.dump({"conv_in.weight": Evil(str(marker))}, handle)
    with pytest.raises(ValueError):
        load_model(f"diffusers:{folder}")
    assert not marker.exists()


@pytest.mark.usefixtures("prefect_api", "ray_local")
def test_credentials_never_reach_prefect(tiny_diffusers_model, s3_bucket, monkeypatch):
    """Run with a fake secret in the environment; nothing Prefect stores may contain it."""
    from prefect.client.orchestration import get_client

    from flows.synthesize import synthesize

    url, options = s3_bucket
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, json.dumps({"key": "AKIAFAKEKEY", "secret": FAKE_SECRET}))
    config = SynthesisConfig.from_options(model=f"diffusers:{tiny_diffusers_model}", num_samples=8, shard_size=4, steps=4, out=f"{url}/secure",
                             extractor="pixels", workers=1, storage_options={"client_kwargs": options["client_kwargs"]})
    assert synthesize(config)["samples"] == 8
    assert FAKE_SECRET not in ShardStore(f"{url}/secure", options).fs.cat_file(f"{url}/secure/manifest.json").decode()

    async def everything_prefect_stored() -> str:
        async with get_client() as client:
            runs = await client.read_flow_runs()
            tasks = await client.read_task_runs()
            logs = await client.read_logs()
            artifacts = await client.read_artifacts()
        return json.dumps([r.model_dump(mode="json") for r in runs + tasks + logs + artifacts])

    stored = asyncio.run(everything_prefect_stored())
    assert "AKIAFAKEKEY" not in stored and FAKE_SECRET not in stored
    assert "secure" in stored  # the run itself is there: the check looked at the right data


def test_servers_bind_loopback_by_default():
    from minority_synth.cli import server

    host = next(p for p in server.params if p.name == "host")
    assert host.default == "127.0.0.1"


def test_no_writes_outside_the_output_root(tmp_path):
    from minority_core.io import features_table

    store = ShardStore(str(tmp_path / "root"))
    for kind in ("../evil", "features/../../evil", "/etc/evil", "selections/../../x"):
        with pytest.raises(ValueError):
            store.write_shard(kind, 0, features_table(["a"], [[1.0]]))
    assert not any(p.name.startswith("evil") for p in tmp_path.rglob("*"))
    assert os.listdir(tmp_path) in ([], ["root"])


@pytest.mark.parametrize(
    "options, secret_paths",
    [
        ({"connection_string": "DefaultEndpointsProtocol=https;AccountKey=S"}, ["connection_string"]),
        ({"profile": "prod"}, ["profile"]),
        ({"client_kwargs": {"endpoint_url": "http://x", "aws_secret_access_key": "S"}}, ["client_kwargs.aws_secret_access_key"]),
        ({"config_kwargs": {"proxies": {"https": "http://user:S@proxy"}, "signature_version": "s3v4"}}, ["config_kwargs.proxies"]),
        ({"s3_additional_kwargs": {"SSECustomerKey": "S"}}, ["s3_additional_kwargs"]),
        ({"client_kwargs": "endpoint_url=http://x"}, ["client_kwargs"]),  # a container given as a string: not judged plain
        ({"anon": True, "client_kwargs": {"endpoint_url": "http://x", "region_name": "eu-west-1"}}, []),
    ],
)
def test_only_known_harmless_storage_options_may_travel_as_flow_parameters(options, secret_paths):
    """An allow-list, nested keys included: whatever it does not know stays out of Prefect."""
    from minority_core.config.storage import split_options
    from minority_core.errors import InputError

    plain, secret, paths = split_options(options)
    assert paths == secret_paths
    assert "S" not in json.dumps(plain).replace('"s3v4"', "")  # no planted secret in the plain part
    if secret_paths:
        with pytest.raises(InputError, match="may be credentials"):
            SynthesisConfig.from_options(model="bundled:digits", num_samples=8, out="/tmp/x", storage_options=options)
    else:
        assert SynthesisConfig.from_options(model="bundled:digits", num_samples=8, out="/tmp/x", storage_options=options).output.storage_options == options


def test_credentials_on_the_command_line_are_refused(tmp_path):
    """argv is readable by every user of the machine: a credential there is one line, exit 2,
    naming the file channel, before anything is written."""
    from click.testing import CliRunner

    from minority_synth.cli import main

    for option in ("secret=S3CRET", "key=AKIA1", "client_kwargs=" + json.dumps({"endpoint_url": "http://x", "aws_session_token": "T"})):
        done = CliRunner().invoke(main, ["synthesize", "--num-samples", "4", "--out", str(tmp_path / "o"), "--storage-option", option])
        assert done.exit_code == 2, done.output
        line = done.output.strip()
        assert "\n" not in line and "visible to every user" in line and "--storage-options-file" in line and "chmod 600" in line, line
    assert os.listdir(tmp_path) == []


def test_storage_options_file_must_be_private(tmp_path):
    """A credentials file others can read (or a link to one) is refused in one line naming the fix;
    a private one is read, and its keys stay out of this process's environment."""
    from click.testing import CliRunner

    from minority_core.config import resolve_storage_options
    from minority_core.config.storage import _KEPT
    from minority_synth.cli import main

    path = tmp_path / "creds.json"
    path.write_text(json.dumps({"key": "AKIAFILE", "secret": FAKE_SECRET}))
    link = tmp_path / "link.json"
    link.symlink_to(path)
    for target, mode, message in ((path, 0o644, f"run `chmod 600 {path}`"), (path, 0o620, "chmod 600"), (link, 0o600, "not a link")):
        path.chmod(mode)
        done = CliRunner().invoke(main, ["verify", "--run", str(tmp_path / "nothing"), "--storage-options-file", str(target)])
        assert done.exit_code == 2 and message in done.output and done.output.count("\n") == 1, done.output
    path.chmod(0o600)
    try:
        done = CliRunner().invoke(main, ["verify", "--run", str(tmp_path / "nothing"), "--storage-options-file", str(path)])
        assert done.exit_code == 2 and "nothing" in done.output  # past the file: the run is what is missing
        assert resolve_storage_options({})["secret"] == FAKE_SECRET
        assert FAKE_SECRET not in json.dumps(dict(os.environ))
    finally:
        _KEPT.clear()


def _ours(mark: str) -> dict[int, tuple[str, bytes, bytes]]:
    """{pid: (name, cmdline, environ)} of every live process carrying the test's marker."""
    needle = f"MINORITY_SECURITY_MARK={mark}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                environ = open(f"/proc/{entry}/environ", "rb").read()
                if needle in environ.split(b"\0"):
                    found[int(entry)] = (open(f"/proc/{entry}/comm").read().strip(), open(f"/proc/{entry}/cmdline", "rb").read(), environ)
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_planted_secrets_reach_no_process_store_log_or_object(s3_bucket, tmp_path):
    """The CLI with credentials from a 0600 file (top-level key/secret, a nested client kwarg) and
    from $MINORITY_STORAGE_OPTIONS, its own ephemeral Prefect server and local Ray: the actors
    write the bucket with them (the environment holds no other credentials), yet no process of
    the run has them in its command line or environment (the env secret only in the CLI's own,
    where the user put it), and none is in Prefect's database, the command's output, the Ray
    session's logs, or any object of the bucket."""
    import glob
    import subprocess
    import sys
    import threading
    import uuid
    from pathlib import Path

    import s3fs

    from minority_synth.env import DEFAULTS

    url, options = s3_bucket
    planted = {"AKIAPLANTEDKEY1", "PLANTED-SECRET-2", "PLANTED-TOKEN-3", "PLANTED-ENV-4"}
    endpoint = options["client_kwargs"]["endpoint_url"]
    creds = tmp_path / "storage.json"
    creds.touch(mode=0o600)
    creds.write_text(json.dumps({"key": "AKIAPLANTEDKEY1", "secret": "PLANTED-SECRET-2", "client_kwargs": {"aws_session_token": "PLANTED-TOKEN-3"}}))
    mark = uuid.uuid4().hex
    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MINORITY_STORAGE", "PREFECT_", "RAY_"))}
    env.update(DEFAULTS, PREFECT_HOME=str(home), AWS_DEFAULT_REGION="us-east-1", MINORITY_SECURITY_MARK=mark,
               MINORITY_STORAGE_OPTIONS=json.dumps({"client_kwargs": {"aws_session_token": "PLANTED-ENV-4"}}))
    cli = str(Path(sys.executable).with_name("minority-synth"))
    seen: dict[int, tuple[str, bytes, bytes]] = {}
    stop = threading.Event()

    def watch() -> None:  # every process of the run, as often as possible while it lasts
        while not stop.wait(0.2):
            seen.update(_ours(mark))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        done = subprocess.run([cli, "synthesize", "--model", "bundled:digits", "--num-samples", "16", "--shard-size", "8", "--steps", "3", "--workers", "1",
                               "--out", f"{url}/planted", "--storage-option", f"endpoint_url={endpoint}", "--storage-options-file", str(creds)],
                              env=env, capture_output=True, text=True, timeout=900)
    finally:
        stop.set()
        watcher.join()
    assert done.returncode == 0, done.stderr[-3000:]

    cli_pids = {pid for pid, (name, cmdline, _) in seen.items() if b"synthesize" in cmdline and b"minority-synth" in cmdline}
    names = " ".join(name for name, _, _ in seen.values()) + " " + " ".join(c.decode(errors="replace") for _, c, _ in seen.values())
    assert cli_pids and "gcs_server" in names and "raylet" in names and "ShardWorker" in names and "uvicorn" in names, names  # the right processes
    leaks = set()
    for pid, (name, cmdline, environ) in seen.items():
        for secret in planted:
            if secret.encode() in cmdline or (secret.encode() in environ and not (secret == "PLANTED-ENV-4" and pid in cli_pids)):
                leaks.add((secret, name, pid))
    assert not leaks, leaks

    fs = s3fs.S3FileSystem(**options)
    objects = b"".join(fs.cat_file(path) for path in fs.find(url.removeprefix("s3://")))
    database = b"".join(p.read_bytes() for p in home.glob("prefect.db*"))
    ray_logs = "".join(Path(p).read_text(errors="replace") for p in glob.glob("/tmp/ray/session_*/logs/*") if Path(p).is_file())
    places = {"prefect": database.decode("latin-1"), "output": done.stdout + done.stderr, "objects": objects.decode("latin-1"), "ray logs": ray_logs}
    assert "planted" in places["prefect"] and len(objects) > 1000  # the run is there: the search looked at the right data
    leaks = {(secret, where) for secret in planted for where, text in places.items() if secret in text}
    assert not leaks, leaks
