"""The shared base run as the container runs it (`python <main> <docker_parameters>` + environment) against the
runtime stub, with a minimal file-replay trigger so the foundation is proven before any Microsoft source."""

import json
import subprocess
from pathlib import Path

import orjson

from emulators.process import ROOT, ChildProcess, python_child, wait_until
from connectors.state import StateFile
from emulators.runtime.harness import compare

REPLAY_MAIN = ROOT / "tests" / "support" / "replay_main.py"


def source_file(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "source.ndjson"
    path.write_bytes(b"".join(orjson.dumps({"Id": f"rec-{i}", "n": i}) + b"\n" for i in range(count)))
    return path


def start(runtime, configuration: dict, intake=True, extra_env=None) -> ChildProcess:
    env = {**runtime.env(configuration, intake=intake), **(extra_env or {})}
    return python_child(str(REPLAY_MAIN), "replay_file", env={**_base_env(), **env}, stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE)


def _base_env():
    import os

    return {key: value for key, value in os.environ.items() if key not in {"TRIGGER_CONFIGURATION", "INTAKE_URL"}}


def what_it_said(proc: ChildProcess) -> str:
    """The trigger's exit code and the end of its standard error, for a test that failed on it."""
    code = proc.stop()
    return f"exit code {code}; stderr: {proc.stderr.read()[-3000:].decode(errors='replace') if proc.stderr else ''}"


def ids(runtime):
    return [orjson.loads(line)["Id"] for line in runtime.delivered()]


def stop(proc: ChildProcess, timeout=20) -> int:
    """SIGTERM; the exit code, negative when killed after the orchestrator's wait (the process's own stop budget:
    8 s of delivery grace, 3 s for file writes)."""
    return proc.stop(timeout)


def test_every_line_delivered_then_graceful_stop(runtime, tmp_path):
    source = source_file(tmp_path, 5000)
    proc = start(runtime, {"source": str(source), "chunk": 250, "batch_max_events": 1000})
    assert wait_until(lambda: len(runtime.delivered()) >= 5000, 60)
    assert stop(proc) == 0
    # Graceful: the last acknowledgements saved (nothing read again at the next start), nothing said undelivered.
    assert StateFile(runtime.data_path / "state" / "replay_file" / "offset.json").load() == {"line": 5000}
    assert [entry for entry in runtime.logs() if entry["level"] != "info"] == []
    result = compare([f"rec-{i}" for i in range(5000)], ids(runtime))
    assert result["lost"] == 0 and result["duplicates"] == 0
    # Lines are delivered byte for byte as the collector serialized them.
    assert sorted(runtime.delivered()) == sorted(source.read_bytes().splitlines())


def test_restart_resumes_from_the_checkpoint(runtime, tmp_path):
    source = source_file(tmp_path, 3000)
    config = {"source": str(source), "chunk": 100, "batch_max_events": 500}
    proc = start(runtime, config)
    assert wait_until(lambda: len(runtime.delivered()) >= 3000, 60)
    assert stop(proc) == 0
    # A second run finds its checkpoint at the end: nothing more is sent (checked once it said where it is).
    proc = start(runtime, config)
    assert wait_until(lambda: replayed(runtime).count("Replayed up to line 3000") == 2, 60), replayed(runtime)
    assert stop(proc) == 0
    assert compare([f"rec-{i}" for i in range(3000)], ids(runtime)) == {
        "expected": 3000, "delivered": 3000, "lost": 0, "duplicates": 0}


def replayed(runtime) -> list[str]:
    return [entry["message"] for entry in runtime.logs() if entry["message"].startswith("Replayed")]


def test_crash_between_delivery_and_checkpoint_redelivers_never_loses(runtime, tmp_path):
    source = source_file(tmp_path, 2000)
    config = {"source": str(source), "chunk": 100, "batch_max_events": 300}
    proc = start(runtime, config, extra_env={"REPLAY_CRASH_BEFORE_CHECKPOINT": "1"})
    assert proc.wait(60) == 9  # died in its first acknowledgement, after the runtime confirmed
    delivered_before_crash = len(runtime.delivered())
    assert delivered_before_crash >= 100
    proc = start(runtime, config)
    assert wait_until(lambda: len(set(ids(runtime))) >= 2000, 60)
    assert stop(proc) == 0
    result = compare([f"rec-{i}" for i in range(2000)], ids(runtime))
    assert result["lost"] == 0
    assert 0 < result["duplicates"] <= delivered_before_crash  # at most what was in flight at the crash


def test_runtime_down_at_start_then_back_loses_nothing(runtime, tmp_path):
    runtime.control(down_for=600)
    source = source_file(tmp_path, 1000)
    proc = start(runtime, {"source": str(source)})
    # Down until the trigger met the outage (its requests were cut), then back.
    met = wait_until(lambda: runtime.stats()["cut"] > 0 or proc.poll() is not None, 60)
    assert met and proc.poll() is None, what_it_said(proc)
    runtime.control(down_for=0)
    assert wait_until(lambda: len(runtime.delivered()) >= 1000, 60)
    assert stop(proc) == 0
    assert compare([f"rec-{i}" for i in range(1000)], ids(runtime))["lost"] == 0


def test_playbook_mode_without_intake_key(runtime, tmp_path):
    source = source_file(tmp_path, 500)
    proc = start(runtime, {"source": str(source), "chunk": 50, "batch_max_events": 200}, intake=False)
    assert wait_until(lambda: len(runtime.delivered()) >= 500, 60)
    assert stop(proc) == 0
    assert compare([f"rec-{i}" for i in range(500)], ids(runtime))["lost"] == 0
    assert runtime.stats()["playbook_events"] >= 3


def test_invalid_configuration_is_one_critical_log_naming_the_field(runtime, tmp_path):
    source = source_file(tmp_path, 10)
    proc = start(runtime, {"source": str(source), "batch_max_events": 0, "intake_key": "secret-intake-key-123"})
    assert proc.wait(60) == 2
    critical = [entry for entry in runtime.logs() if entry["level"] == "critical"]
    assert len(critical) == 1
    assert "batch_max_events" in critical[0]["message"] and "greater than or equal to 1" in critical[0]["message"]
    stderr = proc.stderr.read().decode()
    assert "secret-intake-key-123" not in stderr + json.dumps(runtime.logs())
    assert stderr.count("Traceback") == 0
