"""recforge.core.errors.first_line and recforge.core.cli: how a stage CLI reports results and errors."""

from __future__ import annotations

import json

import pytest

from recforge.core.cli import json_object, run_step
from recforge.core.errors import ConfigError, DataCheckError, DataError, RecForgeError, first_line


def test_first_line_is_the_first_non_empty_line():
    assert first_line(ValueError("\n  bad value  \nmore detail")) == "bad value"
    assert first_line(ValueError("x" * 500), limit=10) == "x" * 10


def test_first_line_of_an_empty_message_is_the_type_name():
    assert first_line(KeyError()) == "KeyError"
    assert first_line(RuntimeError("\n \n")) == "RuntimeError"


def test_error_hierarchy():
    assert issubclass(ConfigError, RecForgeError) and issubclass(DataError, RecForgeError)
    err = DataCheckError("failed", failed=["a"], data_docs="index.html")
    assert isinstance(err, RecForgeError) and err.failed == ["a"] and err.data_docs == "index.html"
    assert DataCheckError("failed").failed == []


def test_json_object():
    assert json_object('{"a": 1}') == {"a": 1}
    assert json_object(None) == {} and json_object("") == {}
    with pytest.raises(ConfigError, match="--conf is not valid JSON"):
        json_object("{a", what="--conf")
    with pytest.raises(ConfigError, match="--config must be a JSON object"):
        json_object("[1]")


def test_run_step_prints_results(capsys):
    assert run_step(lambda: {"rows": 3}) == 0
    assert json.loads(capsys.readouterr().out) == {"rows": 3}
    assert run_step(lambda: "done") == 0
    assert capsys.readouterr().out == "done\n"
    assert run_step(lambda: None) == 0
    assert capsys.readouterr().out == ""


def test_run_step_reports_a_recforge_error_on_one_line(capsys):
    def fail():
        raise DataError("partition 1998-02-14 is missing")

    assert run_step(fail) == 1
    captured = capsys.readouterr()
    assert captured.err == "error: partition 1998-02-14 is missing\n" and captured.out == ""


def test_run_step_lets_a_bug_raise():
    with pytest.raises(ZeroDivisionError):
        run_step(lambda: 1 / 0)
