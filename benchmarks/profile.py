"""Where a trigger spends its CPU: ``python -m benchmarks.profile {o365_cpu|eventhub_envelopes|eventhub_1kb}``.

Runs the scenario's workload (quick size) with the trigger started as ``python -m benchmarks.profile --run
main.py PARAMETER``: every thread of the trigger (event loop, record splitting, delivery) gets its own
``cProfile`` profiler, merged at exit into ``reports/profile-<scenario>.txt``: the top functions by own time,
blocking waits left out, then the callers of the top 15. The bench signals the trigger once it is ready
(SIGUSR1): what was profiled until then (imports, configuration) is dropped, so the profile is the records' cost,
as the bench's rates are. It slows the trigger down: read shares, not rates.
"""

from __future__ import annotations

import atexit
import cProfile
import io
import pstats
import runpy
import shutil
import signal
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path

from emulators.process import ROOT

_profiles: list[cProfile.Profile] = []
_WAITS = ("SimpleQueue' objects", "'poll' of", "'select' of", "'acquire' of '_thread",
          "built-in method time.sleep", "'control' of 'select.kqueue")


def _profile_this_thread(*_args) -> None:
    sys.setprofile(None)  # this hook runs once per thread: hand the thread over to its own profiler
    profile = cProfile.Profile()
    _profiles.append(profile)
    profile.enable()


def _from_here(*_args) -> None:
    """Readiness (SIGUSR1, on the main thread while the others wait for the GIL): start-up's entries go."""
    for profile in _profiles:
        profile.clear()


def _write(out: Path) -> None:
    for profile in _profiles:
        profile.disable()
    text = io.StringIO()
    stats = pstats.Stats(_profiles[0], stream=text)
    for profile in _profiles[1:]:
        stats.add(profile)
    # Blocking waits are wall time, not CPU: left out of the own-time ranking (cumulative times still hold them).
    waits = [key for key in stats.stats if any(name in key[2] for name in _WAITS)]
    waited = sum(stats.stats.pop(key)[2] for key in waits)
    own = sum(entry[2] for entry in stats.stats.values())
    text.write(f"own time outside blocking waits: {own:.2f} s (waits left out: {waited:.2f} s)\n")
    stats.sort_stats("tottime").print_stats(50)
    # Who calls the top entries: a built-in (a socket send, io.open, a decode) says little without its caller.
    stats.print_callers(15)
    out.write_text(_relative(text.getvalue()))


def _relative(text: str) -> str:
    """File names without this machine's paths: the report is committed and read elsewhere."""
    paths = sysconfig.get_paths()
    # Longest first: the virtualenv and the repository may sit inside one another.
    for prefix, name in sorted([(paths["purelib"], "<site-packages>"), (paths["stdlib"], "<stdlib>"),
                                (str(ROOT), ".")], key=lambda item: -len(item[0])):
        text = text.replace(prefix.rstrip("/") + "/", name + "/")
    return text


def run(out: Path, argv: list[str]) -> None:
    """Inside the trigger process: profile every thread, then run ``main.py`` as ``python main.py`` would."""
    threading.setprofile(_profile_this_thread)
    _profile_this_thread()
    signal.signal(signal.SIGUSR1, _from_here)
    atexit.register(_write, out)
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")


def main() -> None:
    if sys.argv[1] == "--run":
        run(Path(sys.argv[2]), sys.argv[3:])
        return
    from benchmarks import measure, scenarios

    name = sys.argv[1]
    out = ROOT / "reports" / f"profile-{name}.txt"
    measure.TRIGGER_COMMAND = [sys.executable, "-m", "benchmarks.profile", "--run", str(out), "main.py"]
    measure.READY_SIGNAL = signal.SIGUSR1
    work = Path(tempfile.mkdtemp(prefix="sekoia-m365-profile-"))
    workspace = scenarios.Workspace(work)
    if name == "eventhub_1kb":
        scenarios.eventhub_1kb(workspace, quick=True, baselines=False)
    else:
        getattr(scenarios, name)(workspace, quick=True)
    if out.exists():
        shutil.rmtree(work, ignore_errors=True)
        print(f"wrote {out}")
    else:
        print(f"no profile written: see the trigger's log under {work}")


if __name__ == "__main__":
    main()
