"""The HTTP API against its own OpenAPI description, with schemathesis: requests generated from the schema (valid
ones and, for the key-protected app, requests without the key) never get a 5xx, and every response matches what
the schema documents (status code, content type, body shape, headers). A bounded run: a few dozen examples per
operation; benchmarks/fuzz_api.py runs the same checks for longer."""

from __future__ import annotations

import pytest

from _needs import need as _need

_need("transformers")
_need("fastapi")
_need("python_multipart")
_need("httpx")
import schemathesis  # noqa: E402  (the dev extra: never skipped)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import negative_data_rejection, positive_data_acceptance  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

from _detector_factory import make_tiny_detector, write_image  # noqa: E402
from causalclip.detect.engine import DetectionEngine  # noqa: E402
from causalclip.serve.app import create_app  # noqa: E402

KEY = "schema-key-0123456789abcdef"
EXAMPLES = 25


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("schema")
    return DetectionEngine(make_tiny_detector(root), max_pixels=1_000_000)


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    return write_image(tmp_path_factory.mktemp("png") / "a.png", (40, 30), seed=4).read_bytes()


@pytest.fixture(scope="module")
def open_api(engine):
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(engine, max_files=3, max_queued_images=6))


@pytest.fixture(scope="module")
def keyed_api(engine):
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(engine, max_files=3, api_key=KEY))


def _fuzz(schema, mode, **call):
    """Hypothesis over every operation of ``schema``: each generated case is sent and validated (schemathesis'
    checks: no 5xx, status code, content type, headers and body as documented). Returns the status codes seen.

    Two checks are narrowed on POST /v1/detect. "A schema-valid request is accepted": no JSON schema can say
    "bytes that decode as an image", so schema-valid random bytes get the documented 422; the 422 is accepted only
    when it names the file parts as unusable images (an empty or missing 'files', the finding of the first run,
    would name 'body.files' and fail). "A schema-violating request is rejected" lists the 4xx codes it counts as
    a rejection, without 413, which this API documents for too many files: any 4xx counts here."""
    seen = []
    for result in schema.get_all_operations():
        operation = result.ok()
        detect = operation.path == "/v1/detect"
        if mode == GenerationMode.NEGATIVE and not detect:  # nothing to break in a GET without parameters
            continue
        excluded = [positive_data_acceptance if mode == GenerationMode.POSITIVE else negative_data_rejection] * detect

        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case):  # run at once below, in this iteration: the loop variables are the ones meant
            response = case.call_and_validate(excluded_checks=excluded, **call)  # noqa: B023
            if excluded and mode == GenerationMode.NEGATIVE:  # noqa: B023
                assert 400 <= response.status_code < 500, response.text
            elif excluded and response.status_code == 422:  # noqa: B023
                errors = response.json()["errors"]
                assert errors and all(e["name"] != "body.files" for e in errors), response.text
                assert all("image" in e["error"] or "truncated" in e["error"] for e in errors), response.text
            seen.append((operation.path, response.status_code))  # noqa: B023

        check()
    return seen


def test_api_matches_its_schema(open_api):
    """Every operation: no 5xx, responses as documented. Random bytes as 'files' are not images: 422 as documented."""
    seen = _fuzz(open_api, GenerationMode.POSITIVE)
    assert {path for path, _ in seen} >= {"/v1/detect", "/v1/model", "/healthz", "/readyz"}
    assert all(code < 500 for _, code in seen)
    assert {code for path, code in seen if path == "/v1/detect"} & {413, 422}


def test_invalid_requests_get_documented_4xx(open_api):
    """Requests that break the schema (negative mode) are refused with a documented 4xx, never a 5xx."""
    seen = _fuzz(open_api, GenerationMode.NEGATIVE)
    assert any(path == "/v1/detect" for path, _ in seen)
    assert all(code < 500 for _, code in seen)


def test_keyed_api_matches_its_schema(keyed_api):
    """With an API key: without it every /v1/ call is a documented 401; with it, as on the open app."""
    without = _fuzz(keyed_api, GenerationMode.POSITIVE)
    assert {code for path, code in without if path.startswith("/v1/")} == {401}
    with_key = _fuzz(keyed_api, GenerationMode.POSITIVE, headers={"Authorization": f"Bearer {KEY}"})
    assert 401 not in {code for _, code in with_key}


def test_a_real_image_through_the_schema_checks(open_api, png):
    """Schemathesis' generated files are random bytes (422); a real image exercises the documented 200 too."""
    op = open_api["/v1/detect"]["POST"]
    case = op.Case(body={"files": [png, png]}, media_type="multipart/form-data")
    response = case.call_and_validate()
    assert response.status_code == 200 and len(response.json()["results"]) == 2
