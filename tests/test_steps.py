import pytest

from lmcsweep.steps import Step, parse_step


@pytest.mark.parametrize("text,expected", [("2000it", Step(2000, "it")), ("2ep", Step(2, "ep")),
                                           (" 15 it ", Step(15, "it")), (0, Step(0, "it")), ("0ep", Step(0, "ep"))])
def test_parse(text, expected):
    assert parse_step(text) == expected


@pytest.mark.parametrize("bad", ["-5it", "2 epochs", "1.5ep", "it", "", True, None, -3, "10"])
def test_parse_rejects(bad):
    with pytest.raises(ValueError):
        parse_step(bad)


def test_to_iterations_and_text():
    assert Step(3, "ep").to_iterations(390) == 1170
    assert Step(500, "it").to_iterations(390) == 500
    assert str(Step(3, "ep")) == "3ep"
    with pytest.raises(ValueError):
        Step(1, "ep").to_iterations(0)
