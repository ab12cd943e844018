"""The soak scenarios' arithmetic and report: thirds of the RSS samples, state sizes, goals, the plot's soak panel.

The soaks themselves run in ``make bench`` (10 million records each); here only what they compute from samples.
"""

from __future__ import annotations

from benchmarks import report
from benchmarks.measure import Run
from benchmarks.soak import Probe, _soak_result, files_size, rss_thirds


def test_rss_thirds_compares_the_medians_of_the_first_and_last_thirds_of_the_time():
    # A start-up spike in the first third and a collection's spike in the last are single samples: medians hold.
    rss = [90, 100, 100, 300, 100, 101, 102, 103, 104, 400, 105]
    samples = [(float(t), t * 1000, mb) for t, mb in enumerate(rss)]
    thirds = rss_thirds(samples)
    assert thirds["first_third_median_mb"] == 100
    assert thirds["last_third_median_mb"] == 104.5
    assert thirds["ratio"] == 1.045
    assert thirds["samples"] == 11 and thirds["max_mb"] == 400


def test_rss_thirds_without_enough_samples_measures_nothing():
    assert rss_thirds([(1.0, 10, 100.0)])["ratio"] is None


def test_probe_samples_once_records_flow_and_takes_the_state_at_a_third():
    counts = iter([0, 10, 40, 70, 100])
    states = iter([{"bytes": 123}])
    probe = Probe(lambda: next(counts), "no_such_trigger", 100, lambda: next(states))
    seen = [probe() for _ in range(5)]
    assert seen == [0, 10, 40, 70, 100]
    assert probe.third == {"records": 40, "bytes": 123}  # once: the state is not read again
    assert probe.samples == []  # no trigger process among this process's children: nothing to sample


def test_files_size_counts_every_file_under_the_data_path(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "ledger.jsonl").write_bytes(b"x" * 10)
    (tmp_path / "lock").write_bytes(b"12")
    assert files_size(tmp_path) == {"bytes": 12, "files": {"lock": 2, "state/ledger.jsonl": 10}}


def _soak(records: int, third_bytes: int, end_bytes: int) -> dict:
    run = Run(records=records, seconds=10.0, ready_s=1.0, complete=True)
    probe = Probe(lambda: 0, "t", 900, dict)
    probe.samples = [(float(t), t * 100, 100.0 + t / 10) for t in range(1, 10)]
    probe.third = {"records": 300, "bytes": third_bytes}
    return _soak_result("w", run, probe, {"bytes": end_bytes}, 900, {})


def test_soak_goals_lost_records_rss_and_state_growth():
    result = _soak(900, 1000, 1050)
    goals = {item["metric"]: item for item in result["goals"]}
    assert goals["records lost"]["met"] and goals["records lost"]["measured"] == 0
    assert goals["soak RSS last/first third (median)"]["met"]
    assert goals["soak state end/first third"]["measured"] == 1.05 and goals["soak state end/first third"]["met"]
    assert result["state"]["bytes_per_record_after_first_third"] == round(50 / 600, 3)

    grown = {item["metric"]: item for item in _soak(800, 1000, 3000)["goals"]}
    assert grown["records lost"]["measured"] == 100 and not grown["records lost"]["met"]
    assert not grown["soak state end/first third"]["met"]


def test_the_report_draws_a_soak_panel(tmp_path):
    document = {"quick": True, "scenarios": {"o365_soak": _soak(900, 1000, 1050)}}
    report.plot(document, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert "o365_soak: records lost 0" in report.table(document)
