"""Fuzz the `causalclip serve` API against its own OpenAPI description with schemathesis, for longer than the test
suite does (tests/test_serve_schema.py runs 25 examples per operation).

The app runs in-process (ASGI; nothing listens on a port) around a detector built here: a tiny CLIP saved like a
real one with a one-epoch head (benchmarks/serve_load.py's builder), or --detector. Every operation gets
--examples generated requests in positive mode (schema-valid) and, for POST /v1/detect, in negative mode
(schema-violating), on an app without a key and on one with a key (with and without the key sent). Each response
goes through schemathesis' checks: no 5xx, status code, content type, headers and body as documented. Two checks
are narrowed as in the test: schema-valid random bytes in 'files' are not images, so their documented 422 passes
when it names the file parts (not a missing 'files'); and a schema-violating request counts as rejected with any
4xx (schemathesis' list lacks 413, which this API documents for too many files).

    python benchmarks/fuzz_api.py --examples 500          # about 10 minutes on 2 cores
    python benchmarks/fuzz_api.py --detector DIR --examples 2000

Exit status 1 if any check failed; the failures are printed with a curl command that reproduces each.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
import traceback
from pathlib import Path

KEY = "fuzz-api-key-0123456789abcdef"


def _checker(op, mode, examples, seed, excluded, headers, statuses):
    """A hypothesis test over ``op``'s generated cases (a factory, so each operation binds its own values)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed

    @hseed(seed)
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=op.as_strategy(generation_mode=mode))
    def check(case):
        response = case.call_and_validate(excluded_checks=excluded, headers=headers)
        if excluded and mode == "negative":  # any 4xx is a rejection (413: too many files)
            assert 400 <= response.status_code < 500, response.text
        elif excluded and response.status_code == 422:
            errors = response.json()["errors"]
            assert errors and all(e["name"] != "body.files" for e in errors), response.text
        statuses[f"{op.method.upper()} {op.path} {response.status_code}"] += 1

    return check


def fuzz(schema, mode, examples: int, *, seed: int, headers: dict | None = None) -> tuple[collections.Counter, list]:
    from schemathesis.checks import negative_data_rejection, positive_data_acceptance
    from schemathesis.generation import GenerationMode

    statuses: collections.Counter[str] = collections.Counter()
    failures = []
    for result in schema.get_all_operations():
        op = result.ok()
        detect = op.path == "/v1/detect"
        if mode == GenerationMode.NEGATIVE and not detect:
            continue
        excluded = [positive_data_acceptance if mode == GenerationMode.POSITIVE else negative_data_rejection] * detect

        check = _checker(op, mode, examples, seed, excluded, headers, statuses)
        try:
            check()
        except Exception as exc:  # noqa: BLE001 -- a finding: report it and go on with the next operation
            failures.append(f"{op.method.upper()} {op.path} ({mode}):\n{''.join(traceback.format_exception_only(exc))}")
    return statuses, failures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detector", help="detector folder (default: a tiny CLIP detector built in a temp folder)")
    p.add_argument("--examples", type=int, default=200, help="generated requests per operation and mode")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import schemathesis
    from schemathesis.generation import GenerationMode

    from causalclip.detect.engine import DetectionEngine
    from causalclip.serve.app import create_app

    sys.path.insert(0, str(Path(__file__).parent))
    from serve_load import build_detector

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fuzz-api-") as tmp:
        detector = args.detector or build_detector(Path(tmp), "tiny")
        engine = DetectionEngine(detector, max_pixels=1_000_000)
        apps = {
            "no key": create_app(engine, max_files=3, max_queued_images=6),
            "with key": create_app(engine, max_files=3, api_key=KEY),
        }
        total: collections.Counter[str] = collections.Counter()
        failures = []
        for label, app in apps.items():
            schema = schemathesis.openapi.from_asgi("/openapi.json", app)
            runs = [(GenerationMode.POSITIVE, None), (GenerationMode.NEGATIVE, None)]
            if label == "with key":
                runs += [
                    (m, {"Authorization": f"Bearer {KEY}"}) for m in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
                ]
            for mode, headers in runs:
                seen, failed = fuzz(schema, mode, args.examples, seed=args.seed, headers=headers)
                sent = "key sent" if headers else "no key sent"
                total.update({f"[{label}, {sent}] {k}": v for k, v in seen.items()})
                failures += [f"[{label}, {sent}] {f}" for f in failed]
    print(f"{sum(total.values())} requests in {time.perf_counter() - t0:.0f} s; responses by app and status:")
    for key, n in sorted(total.items()):
        print(f"  {n:6d}  {key}")
    print(f"{len(failures)} failing operation(s)")
    for f in failures:
        print(f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
