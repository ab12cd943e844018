"""Reliability suite (``python -m benchmarks.reliability [--quick] [--only NAME ...]``, ``make reliability``).

Each scenario runs the triggers as the container does (``python main.py ...``) against the emulators, Azurite and
the runtime stub, breaks something (SIGKILL, SIGTERM, faults, bad input, bad configuration), and compares what
the source published with what the runtime stub received. The results go to ``reports/reliability.json``.

Modules: ``context`` (sizes, work directories, what the secrets scan reads), ``processes`` (a trigger process
watched from outside), ``stacks`` (both triggers' servers behind one interface), ``keys`` (Event Hubs keys and
the oracle of what a body must deliver), ``metrics`` (reading a Prometheus page), the scenarios (``kills``,
``faults``, ``rebalance``, ``bad_input``, ``bad_config``, ``secrets``) and ``runner`` (the catalogue, the report).
``tests/test_reliability.py`` runs a few of them at the SMOKE scale in ``make test``.
"""
