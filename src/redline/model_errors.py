"""Model errors in words a user can act on.

Inspect retries a failing model call with tenacity, and what reaches the harness is tenacity's
`RetryError(<Future ... raised APIConnectionError>)`: neither the cause nor the server it tried.
`readable_model_error()` unwraps that to the last attempt's exception and names the URL of the
request that failed (the provider's base URL plus the endpoint), which the OpenAI and Anthropic
clients attach to their errors.
"""

from __future__ import annotations

from tenacity import RetryError

# Error classes (by name, across the openai, anthropic, httpx and httpx2 packages) that mean the
# server was not reached or did not answer in time.
UNREACHED = ("APIConnectionError", "APITimeoutError", "ConnectError", "ConnectTimeout", "ReadTimeout",
             "RemoteProtocolError")


class ModelCallError(RuntimeError):
    """A model call failed; the message says why and where (the original is its `__cause__`)."""


def last_error(error: BaseException) -> BaseException:
    """The exception inside tenacity's RetryError (its last attempt) and single-error groups."""
    for _ in range(10):  # nesting is shallow; a bound keeps a cyclic chain from looping
        if isinstance(error, RetryError) and error.last_attempt.failed:
            inner = error.last_attempt.exception()
        elif isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            inner = error.exceptions[0]
        else:
            return error
        if inner is None:
            return error
        error = inner
    return error


def request_url(error: BaseException) -> str | None:
    """The URL of the HTTP request behind `error` or its causes, when the client recorded it."""
    seen: BaseException | None = error
    for _ in range(5):
        if seen is None:
            return None
        try:
            request = getattr(seen, "request", None)  # httpx's raises when it has none
        except RuntimeError:
            request = None
        url = getattr(request, "url", None)
        if url:
            return str(url)
        seen = seen.__cause__ or seen.__context__
    return None


def unreached(error: BaseException) -> bool:
    return any(cls.__name__ in UNREACHED for cls in type(error).__mro__)


def describe_model_error(error: BaseException) -> str:
    """One line: what failed, why (the underlying cause), and the URL it was sent to."""
    inner = last_error(error)
    text = str(inner).strip() or type(inner).__name__
    cause = inner.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text} ({type(cause).__name__}: {cause})"
    url = request_url(inner)
    if unreached(inner):
        return f"cannot reach the model server at {url or 'its base URL'}: {text}"
    if url and url not in text:
        return f"{type(inner).__name__}: {text} (request to {url})"
    return f"{type(inner).__name__}: {text}"


def readable_model_error(error: Exception) -> Exception:
    """`error` itself when it already says what went wrong; a `ModelCallError` that does otherwise
    (for the router, whose error text goes to the agent and into the sample's error)."""
    inner = last_error(error)
    if inner is error and request_url(error) is None:
        return error
    readable = ModelCallError(describe_model_error(error))
    readable.__cause__ = error
    return readable
