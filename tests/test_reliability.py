"""The reliability suite's small version (``make test``): a few fast scenarios through the same code as
``make reliability`` (``benchmarks/reliability``), at the SMOKE scale: 3 kills on a small backlog per trigger,
the runtime stub down for 5 s, bad configuration, the scenarios of other issues; every scenario's outputs (logs,
process output, metrics pages) scanned for the secrets it configured. Each test has its own context, so they run
on any pytest-xdist worker."""

from __future__ import annotations

import pytest

from benchmarks.reliability import runner, secrets
from benchmarks.reliability.context import SMOKE, Artifacts, Context
from benchmarks.reliability.keys import expected_keys, text_keys_intake
from benchmarks.reliability.verdict import judge


@pytest.fixture
def ctx(tmp_path) -> Context:
    return Context(tmp_path, SMOKE, quick=True)


def run(ctx: Context, name: str) -> dict:
    result = runner.run_one(ctx, name, log=lambda line: None)
    assert result["passed"], (result.get("failures"), result.get("traceback"))
    assert result["lost"] == 0
    # The secrets scan of `make reliability`, over what this scenario wrote and scraped.
    hits, _ = secrets.leaks(ctx.artifacts)
    assert hits == [], hits
    return result


def test_o365_kills(ctx):
    result = run(ctx, "o365_kills")
    assert result["kills_mid_backlog"] == SMOKE.kills  # every kill landed while records were still to deliver
    assert result["duplicates"] <= result["in_flight_at_kills"]


def test_eventhub_kills(ctx):
    result = run(ctx, "eventhub_kills")
    assert result["kills_mid_backlog"] == SMOKE.kills
    assert result["duplicates"] <= result["in_flight_at_kills"]


def test_o365_runtime_down_recovers(ctx):
    result = run(ctx, "o365_runtime_down")
    assert result["recovery_s"] is not None and result["exit_code"] == 0
    assert 1 <= result["runtime_warnings"] <= 3  # said once, not per batch
    assert ctx.artifacts.metrics and ctx.artifacts.secrets  # the scan in run() read a metrics page, knew secrets


def test_o365_wrong_secret_is_one_critical_log_and_exit_2(ctx):
    result = run(ctx, "o365_bad_config")
    [case] = result["cases"].values()
    assert case["exit_code"] == 2 and "`client_secret`" in case["critical"][0]


def test_o365_refused_records_are_set_aside_and_the_rest_delivered(ctx):
    result = run(ctx, "o365_refused_events")
    assert result["refused_kept"] == result["refused"] == result["set_aside"] > 0
    assert result["delivered_unique"] == result["published"] - result["refused"]


def test_eventhub_oversize_records_arrive_shortened(ctx):
    result = run(ctx, "eventhub_oversize_shortened")
    assert result["shortened_delivered"] == result["oversize"] > 0
    assert result["largest_shortened_bytes"] <= 250_000


def test_o365_wrong_intake_is_one_critical_log_and_exit_2(ctx):
    result = run(ctx, "o365_wrong_intake")
    assert {case["exit_code"] for case in result["cases"].values()} == {2}
    assert {case["field"] for case in result["cases"].values()} == {"intake_key", "intake_server"}


def test_o365_stop_while_the_runtime_hangs(ctx):
    result = run(ctx, "o365_stop_runtime_hangs")
    assert result["exit_code_while_hanging"] == 0 and result["stop_s_while_hanging"] <= 20
    assert result["committed_at_stop"] == 0


def test_o365_logs_never_wait_for_a_hanging_runtime_and_files_stay_private(ctx):
    result = run(ctx, "o365_runtime_logs_down")
    assert result["delivered_during_fault_s"] is not None and result["status_lines_during_hang"] >= 1
    assert result["log_failed_lines"] == 1 and result["log_back_lines"] == 1
    assert result["wide_state_modes"] == [] and result["records_files"] and not result["records_files_shared"]


def test_judge_adds_the_shared_closing_checks_asked_for_after_the_scenarios_own():
    result = {"lost": 0, "duplicates": 2, "output_tracebacks": 1, "exit_codes": [0, 143]}
    judged = judge(result, ["its own check"], exit_codes=True, duplicates=True, tracebacks=True)
    assert judged["failures"] == ["its own check", "exit codes [0, 143] after SIGTERM", "2 duplicates",
                                  "1 tracebacks in the output"]
    assert judged["passed"] is False
    one_run = {"lost": 3, "duplicates": 2, "output_tracebacks": 1, "exit_code": 1}
    assert judge(one_run, [], exit_codes=True)["failures"] == ["3 records lost", "exit code 1 after SIGTERM"]
    clean = {"lost": 0, "duplicates": 0, "output_tracebacks": 0, "exit_code": 0}
    assert judge(clean, [], exit_codes=True, duplicates=True, tracebacks=True)["passed"] is True


def test_secrets_scan_finds_a_planted_secret(tmp_path):
    """The scan itself: a secret or an unmasked key in any output is a hit."""
    leaky = tmp_path / "trigger.stderr"
    leaky.write_text("connecting with SharedAccessKey=abcdef123456;\nthe token is Sup3rSecretValue\n")
    artifacts = Artifacts()
    artifacts.add_file(leaky)
    artifacts.add_metrics('metric{label="Sup3rSecretValue"} 1\n')
    artifacts.add_secrets("Sup3rSecretValue")
    result = secrets.scan(Context(tmp_path, SMOKE, quick=True, artifacts=artifacts))
    assert not result["passed"] and result["hits"] == 3


def test_event_hubs_oracle():
    must, may = expected_keys(b'{"records": [{"b": 1, "a": 2}, 3]}', text_keys_intake)
    assert must == ['{"a":2,"b":1}'] and may == ["3"]
    assert expected_keys(b"", text_keys_intake) == ([], [])
    assert expected_keys(b'{"records": null}', text_keys_intake) == ([], ['{"records":null}'])
    assert expected_keys(b"not json", text_keys_intake) == ([], ["text:not json"])
    # Integers are kept exact: a trigger turning them into floats is caught.
    assert expected_keys(b'{"n": 123456789012345678901234567890}', text_keys_intake)[0] == [
        '{"n":123456789012345678901234567890}']


def test_eventhub_partitions_added_while_running_and_while_stopped(ctx):
    """Issue 10 item 11, with `starting_position: latest` (see eventhub_hardening.py)."""
    result = run(ctx, "eventhub_new_partitions")
    assert result["new_partitions_s"] <= 60 and result["partitions_metric"] == 6 and result["growth_logged"]


@pytest.mark.parametrize("name", ["o365_clock_skew", "o365_second_instance", "o365_missing_dlp_permission",
                                  "o365_restart_after_fault", "o365_late_blobs"])
def test_o365_hardening(ctx, name):
    """Issue 10 items 6-9 and late blobs: each scenario checks its own log lines (see o365_hardening.py)."""
    run(ctx, name)


@pytest.mark.parametrize("name", ["o365_clock_ahead", "o365_future_resume"])
def test_o365_clock_scenarios(ctx, name):
    """Issue 16: the API's clock 15 minutes ahead, a resume point in its future (see o365_stall.py)."""
    result = run(ctx, name)
    assert result["recovery_s"] is not None and result["duplicates"] == 0
