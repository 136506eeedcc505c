"""The shared argument checks and their one message form."""

import pytest

from keras_sft import checks


@pytest.mark.parametrize(
    ("check", "value", "message"),
    [
        (
            lambda v: checks.check_int("n", v, minimum=1),
            0,
            "Invalid value for argument `n`. Expected an int > 0. "
            "Received: n=0",
        ),
        (
            lambda v: checks.check_int("n", v, minimum=2),
            True,
            "Invalid value for argument `n`. Expected an int >= 2. "
            "Received: n=True",
        ),
        (
            lambda v: checks.check_float("x", v),
            float("nan"),
            "Invalid value for argument `x`. Expected a float >= 0. "
            "Received: x=nan",
        ),
        (
            lambda v: checks.check_float("x", v, positive=True),
            0,
            "Invalid value for argument `x`. Expected a float > 0. "
            "Received: x=0",
        ),
        (
            lambda v: checks.check_one_of("s", v, ["a", "b"]),
            "c",
            "Invalid value for argument `s`. Expected one of ('a', 'b'). "
            "Received: s='c'",
        ),
        (
            lambda v: checks.check_model("m", v, allow_none=True),
            3,
            "Invalid value for argument `m`. Expected a `keras.Model` "
            "instance or None. Received: m=3",
        ),
    ],
)
def test_checks_raise_in_keras_form(check, value, message):
    with pytest.raises(ValueError) as error:
        check(value)
    assert str(error.value) == message


def test_valid_values_pass():
    checks.check_int("n", 2, minimum=2)
    checks.check_float("x", 0.0)
    checks.check_float("x", 1e-9, positive=True)
    checks.check_one_of("s", "a", ("a",))
    checks.check_model("m", None, allow_none=True)
    checks.check_bool("b", False)
