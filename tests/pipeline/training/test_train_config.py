"""TrainConfig (recforge.pipeline.training.train): defaults from the family registry, one-line errors naming the
field."""

import pytest

from recforge.core.errors import ConfigError
from recforge.models.families import FAMILY_NAMES, OPT_IN_FAMILIES
from recforge.pipeline.training.train import TrainConfig


def test_defaults_train_the_nightly_families_and_opt_in_ones_when_named():
    assert TrainConfig().families == FAMILY_NAMES
    assert not set(OPT_IN_FAMILIES) & set(TrainConfig().families)
    assert TrainConfig.from_dict({"families": ["mt_wnd", "dien"]}).families == ("mt_wnd", "dien")
    cfg = TrainConfig.from_dict({"families": ["din"], "max_epochs": 3, "hyperparams": {"din": {"mlp": [8]}}})
    assert cfg.families == ("din",) and cfg.max_epochs == 3 and cfg.hyperparams == {"din": {"mlp": [8]}}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"families": ["xgb"]}, "TrainConfig.families: unknown model families ['xgb']"),
        ({"max_epochs": 0}, "TrainConfig.max_epochs: Input should be greater than or equal to 1"),
        ({"learning_rate": 0.0}, "TrainConfig.learning_rate: Input should be greater than 0"),
        ({"batch_size": "512"}, "TrainConfig.batch_size must be int"),
        ({"max_epoch": 3}, "TrainConfig: unknown key(s) ['max_epoch']"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_field(values, message):
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_dict(values)
    assert message in str(caught.value) and "\n" not in str(caught.value)
