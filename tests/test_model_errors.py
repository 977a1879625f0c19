"""Model errors in words: tenacity's RetryError unwrapped, the failing URL named."""

from __future__ import annotations

import httpx2
import openai
from tenacity import Future, RetryError

from redline.model_errors import ModelCallError, describe_model_error, last_error, readable_model_error

URL = "http://127.0.0.1:9/v1/chat/completions"


def retry_error(inner: BaseException) -> RetryError:
    attempt = Future(attempt_number=3)
    attempt.set_exception(inner)
    return RetryError(attempt)


def connection_error() -> openai.APIConnectionError:
    try:
        try:
            raise httpx2.ConnectError("All connection attempts failed")
        except httpx2.ConnectError as cause:
            raise openai.APIConnectionError(request=httpx2.Request("POST", URL)) from cause
    except openai.APIConnectionError as e:
        return e


def test_a_retried_connection_error_names_the_url_and_the_cause():
    wrapped = retry_error(connection_error())
    assert isinstance(last_error(wrapped), openai.APIConnectionError)
    text = describe_model_error(wrapped)
    assert text == (f"cannot reach the model server at {URL}: Connection error. "
                    "(ConnectError: All connection attempts failed)")
    readable = readable_model_error(wrapped)
    assert isinstance(readable, ModelCallError) and str(readable) == text and readable.__cause__ is wrapped


def test_an_http_error_keeps_its_message_and_gains_the_url():
    response = httpx2.Response(404, request=httpx2.Request("POST", URL), json={"error": "no such model"})
    error = openai.NotFoundError("Error code: 404 - no such model", response=response, body=None)
    assert describe_model_error(error) == f"NotFoundError: Error code: 404 - no such model (request to {URL})"


def test_errors_that_already_say_what_went_wrong_pass_unchanged():
    plain = RuntimeError("the provider is down")
    assert readable_model_error(plain) is plain
    assert describe_model_error(ExceptionGroup("g", [plain])) == "RuntimeError: the provider is down"
