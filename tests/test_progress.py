"""The stall watch on a fake clock: when a reading is stalled, the steps of its recovery, liveness, time until loss."""

from connectors.metrics import gauge_values
from connectors.progress import StallWatch, seconds_until_loss, stalled_seconds


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make(stall=60.0, steps=("reopening its receiver", "reopening the client", "restarting the run"),
         trigger="test-trigger"):
    """The gauges are process-wide: a test that reads them names its own trigger."""
    clock, logs, recoveries = Clock(), [], []
    watch = StallWatch(trigger, "partition", steps, lambda message, level="info": logs.append((level, message)),
                       stall_seconds=stall, clock=clock)
    watch.recover = lambda name, index: recoveries.append((name, index))
    return watch, clock, logs, recoveries


def test_idle_is_not_a_stall_and_behind_counts_from_when_it_fell_behind():
    watch, clock, logs, recoveries = make()
    watch.progressed("0")
    clock.now += 3600  # idle for an hour: nothing to read
    watch.check()
    assert not logs and not recoveries
    watch.behind("0", True)  # the source now holds more
    clock.now += 59
    watch.check()
    assert not recoveries and watch.stalled_for("0") == 59
    clock.now += 1
    watch.check()
    assert recoveries == [("0", 0)]
    assert [level for level, _ in logs] == ["warning"]
    assert "Partition 0 has made no progress for 1 min" in logs[0][1] and "reopening its receiver" in logs[0][1]


def test_steps_escalate_then_the_trigger_is_unhealthy_until_progress():
    watch, clock, logs, recoveries = make()
    watch.behind("3", True)
    for _ in range(5):
        clock.now += 60
        watch.check()
        watch.check()  # a beat within the same step changes nothing
    assert recoveries == [("3", 0), ("3", 1), ("3", 2), ("3", 2), ("3", 2)]
    assert watch.failed == "3"
    errors = [message for level, message in logs if level == "error"]
    assert len(errors) == 1 and "unhealthy" in errors[0]
    assert len([1 for level, _ in logs if level == "warning"]) == 3  # one per step, not per retry of the last
    assert any("stalled for 5 min" in part for part in watch.status())
    watch.progressed("3")
    assert watch.failed is None and watch.stalled_for("3") == 0
    assert "progresses again after reopening its receiver, then reopening the client" in logs[-1][1]
    clock.now += 59
    watch.check()
    assert len(recoveries) == 5  # a new stall starts from the first step, stall_seconds after the last progress


def test_caught_up_ends_the_stall():
    watch, clock, logs, recoveries = make()
    watch.behind("1", True)
    clock.now += 61
    watch.check()
    watch.behind("1", False)
    assert watch.stalled_for("1") == 0 and "progresses again" in logs[-1][1]
    clock.now += 600
    watch.check()
    assert recoveries == [("1", 0)]


def test_metric_and_forget():
    watch, clock, logs, recoveries = make()
    watch.behind("7", True)
    clock.now += 12.5
    watch.check()
    values = {sample.labels["reading"]: sample.value for family in stalled_seconds.collect()
              for sample in family.samples if sample.labels["trigger"] == "test-trigger"}
    assert values["7"] == 12.5
    watch.forget("7")
    values = {sample.labels["reading"] for family in stalled_seconds.collect()
              for sample in family.samples if sample.labels["trigger"] == "test-trigger"}
    assert "7" not in values


def test_time_until_loss_warned_under_a_day_then_under_an_hour():
    watch, clock, logs, recoveries = make(trigger="loss-trigger")
    watch.until_loss("2", 30 * 3600)
    watch.check()
    assert not logs
    assert watch.status() == ["oldest undelivered record leaves the source in 30 h 0 min (partition 2)"]
    clock.now += 7 * 3600  # 23 h left
    watch.check()
    watch.check()
    assert len(logs) == 1 and logs[0][0] == "warning" and "Partition 2" in logs[0][1]
    clock.now += 22.5 * 3600
    watch.check()
    assert len(logs) == 2
    assert 0 < gauge_values(seconds_until_loss)["loss-trigger"] <= 3600
    watch.until_loss("2", None)  # read: nothing at risk any more
    watch.check()
    assert "loss-trigger" not in gauge_values(seconds_until_loss) and watch.status() == []


def test_time_until_loss_already_under_an_hour_is_one_warning():
    watch, clock, logs, recoveries = make()
    watch.until_loss("5", 600)
    watch.check()
    watch.check()
    assert len(logs) == 1 and "10 min" in logs[0][1]


def test_a_step_that_acts_slowly_gets_its_own_time_before_the_next():
    watch, clock, logs, recoveries = make(stall=10.0)
    watch.step_seconds = 46.0  # a receiver reopened at the next load-balancing round
    watch.behind("1", True)
    clock.now += 10
    watch.check()
    assert recoveries == [("1", 0)]
    clock.now += 45
    watch.check()
    assert recoveries == [("1", 0)]  # still the first step's time
    clock.now += 1
    watch.check()
    assert recoveries == [("1", 0), ("1", 1)]


def test_the_readings_watched_are_listed():
    watch, clock, logs, recoveries = make()
    watch.behind("1", True)
    watch.progressed("2")
    assert sorted(watch.readings()) == ["1", "2"]
    watch.forget("1")
    assert watch.readings() == ["2"]
