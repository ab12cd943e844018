"""A scenario's verdict: its own failures, the closing checks most scenarios share, and ``passed``."""

from __future__ import annotations


def judge(result: dict, failures: list[str], *, exit_codes: bool = False, duplicates: bool = False,
          tracebacks: bool = False) -> dict:
    """``finish`` after the shared closing checks asked for, in this order: every run ended with exit code 0 after
    SIGTERM (``result["exit_codes"]``, or ``result["exit_code"]`` for one run), no duplicates, no traceback in the
    output."""
    if exit_codes:
        if "exit_codes" in result:
            if any(code != 0 for code in result["exit_codes"]):
                failures.append(f"exit codes {result['exit_codes']} after SIGTERM")
        elif result["exit_code"] != 0:
            failures.append(f"exit code {result['exit_code']} after SIGTERM")
    if duplicates and result["duplicates"]:
        failures.append(f"{result['duplicates']} duplicates")
    if tracebacks and result["output_tracebacks"]:
        failures.append(f"{result['output_tracebacks']} tracebacks in the output")
    return finish(result, failures)


def finish(result: dict, failures: list[str]) -> dict:
    """``passed`` when nothing was lost and no check failed; the reasons otherwise."""
    if result.get("lost"):
        failures.insert(0, f"{result['lost']} records lost")
    result["passed"] = not failures
    result["failures"] = failures
    return result
