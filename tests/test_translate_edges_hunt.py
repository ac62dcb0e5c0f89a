"""Translation requests at their edges, read alike on every protocol: the request's own ``timeout`` and
``priority`` on Triton's generate extension as on infer, and a decoding option's numeric string taken
only as a number is written on the wire."""

from __future__ import annotations

import pytest

from serving.decoding.options import options_from_parameters
from serving.errors import BadRequest
from serving.protocol.generate import generate_request
from tests.test_generate_hunt import TRANSLATOR


@pytest.mark.parametrize("where", ["top", "parameters"])
def test_a_generate_requests_timeout_and_priority_are_the_requests_own_as_on_infer(where: str) -> None:
    """``{"text": ..., "timeout": 1}`` was a 200 after a full translation where infer's 504 came at
    1 us: generate dropped ``timeout`` and ``priority`` with the other protocol parameters."""
    given = {"timeout": 250_000, "priority": 2}
    body = {"text": "five", **given} if where == "top" else {"text": "five", "parameters": given}
    request = generate_request(body, TRANSLATOR, "1")
    assert request.timeout_s == 0.25
    assert request.priority == 2
    assert request.parameters == {}  # not the model's: the request's own, as infer keeps them


def test_a_generate_timeout_of_zero_is_no_timeout_as_infer_reads_it() -> None:
    assert generate_request({"text": "five", "timeout": 0}, TRANSLATOR, "1").timeout_s is None


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ({"timeout": -1}, "parameter 'timeout' must be a number of microseconds"),
        ({"timeout": "soon"}, "parameter 'timeout' must be a number of microseconds"),
        ({"timeout": 1.5}, "parameter 'timeout' must be a number of microseconds"),
        ({"priority": -1}, "parameter 'priority' must be an integer from 0"),
        ({"priority": "high"}, "parameter 'priority' must be an integer from 0"),
    ],
)
def test_a_generate_timeout_or_priority_infer_refuses_is_refused_by_generate_too(given, words) -> None:
    """These were translated, the value ignored; infer answers each a 400 naming it."""
    with pytest.raises(BadRequest, match=words):
        generate_request({"text": "five", **given}, TRANSLATOR, "1")


@pytest.mark.parametrize("value", ["1_0", "\u0664", "\uff12", "2\u0660"])
def test_a_float_option_refuses_the_numeric_strings_an_integer_option_refuses(value: str) -> None:
    """``float()`` reads ``"1_0"`` as 10 and Arabic-Indic or full-width digits as numbers: ``alpha``
    ``"1_0"`` decoded at alpha 10, where ``beam_size`` ``"\u0664"`` was already a 400."""
    with pytest.raises(ValueError, match="parameter 'alpha' must be a number"):
        options_from_parameters({"alpha": value})
    with pytest.raises(ValueError, match="parameter 'beam_size' must be an integer"):
        options_from_parameters({"beam_size": value})


@pytest.mark.parametrize(("value", "alpha"), [("2", 2.0), (" 0.5 ", 0.5), ("1e-1", 0.1), ("-0", -0.0)])
def test_a_float_option_still_takes_a_number_written_as_a_string(value: str, alpha: float) -> None:
    assert options_from_parameters({"alpha": value}).alpha == alpha
