"""`make run`'s preflight: a bad date or param is one line on stderr, before Airflow starts."""

import pytest

from recforge.pipeline.training import nightly


@pytest.mark.parametrize(
    ("day", "conf", "message"),
    [
        ("1998-13-01", "{}", "not a date (YYYY-MM-DD): '1998-13-01'"),
        ("1990-01-01", "{}", "outside the data (1997-09-20..1998-04-22)"),
        ("1998-04-22", '{"bogus": 1}', "NightlyParams: unknown key(s) ['bogus']"),
        ("1998-04-22", '{"train_config": {"max_epoch": 1}}', "TrainConfig: unknown key(s) ['max_epoch']"),
        ("1998-04-22", '{"families": ["xgb"]}', "unknown model families ['xgb']"),
        ("1998-04-22", "{", "CONF is not valid JSON"),
        ("1998-04-22", '{"train_config": {"max_epochs": "3"}}', "TrainConfig.max_epochs must be int"),
        ("1998-04-22", '{"check_config": {"volume_z_warning": "x"}}', "volume_z_warning"),
    ],
)
def test_bad_input_is_one_line(movielens_raw, capsys, day, conf, message):
    assert nightly.main(["check", "--date", day, "--conf", conf]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1  # one line, no traceback


def test_good_input_passes(movielens_raw, capsys):
    assert nightly.main(["check", "--date", "1998-04-22", "--conf", '{"families": ["din", "logreg"]}']) == 0
    assert '"families": [' in capsys.readouterr().out
