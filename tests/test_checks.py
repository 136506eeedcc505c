"""The shared argument checks and their one message form."""

import pytest

from keras_sft import _checks


@pytest.mark.parametrize(
    ("check", "value", "message"),
    [
        (
            lambda v: _checks.check_int("n", v, minimum=1),
            0,
            "Invalid value for argument `n`. Expected an int > 0. "
            "Received: n=0",
        ),
        (
            lambda v: _checks.check_int("n", v, minimum=2),
            True,
            "Invalid value for argument `n`. Expected an int >= 2. "
            "Received: n=True",
        ),
        (
            lambda v: _checks.check_float("x", v),
            float("nan"),
            "Invalid value for argument `x`. Expected a float >= 0. "
            "Received: x=nan",
        ),
        (
            lambda v: _checks.check_float("x", v, positive=True),
            0,
            "Invalid value for argument `x`. Expected a float > 0. "
            "Received: x=0",
        ),
        (
            lambda v: _checks.check_one_of("s", v, ["a", "b"]),
            "c",
            "Invalid value for argument `s`. Expected one of ('a', 'b'). "
            "Received: s='c'",
        ),
        (
            lambda v: _checks.check_model("m", v, allow_none=True),
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
    _checks.check_int("n", 2, minimum=2)
    _checks.check_float("x", 0.0)
    _checks.check_float("x", 1e-9, positive=True)
    _checks.check_one_of("s", "a", ("a",))
    _checks.check_model("m", None, allow_none=True)
    _checks.check_bool("b", False)
