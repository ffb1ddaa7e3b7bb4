"""The registered model's description (aliases, alias history) and the capped-LBT text, as a person reads them."""

from recforge.pipeline.registry.description import model_description
from recforge.pipeline.registry.versions import lbt_text


def test_description_keeps_angle_brackets_and_tabulates_the_history():
    entries = [{"time": "t1", "alias": "champion-cpu-onnxruntime", "from_version": None, "to_version": "1",
                "action": "promote", "reason": "first_champion: no champion"},
               {"time": "t2", "alias": "champion-cpu-onnxruntime", "from_version": "1", "to_version": "2",
                "action": "promote", "reason": "LBT <x> | +30%"}]
    text = model_description("dlrm", {"champion-cpu-onnxruntime": "2", "previous-cpu-onnxruntime": "1"}, entries)
    assert "`champion-<target>`" in text and "`previous-<target>`" in text  # code: not an HTML tag
    assert "| `champion-cpu-onnxruntime` | v2 |" in text and "| `previous-cpu-onnxruntime` | v1 |" in text
    rows = [line for line in text.splitlines() if line.startswith(("| t1 ", "| t2 "))]
    assert rows[0].startswith("| t2 |") and rows[1].startswith("| t1 |")  # newest first
    assert "LBT &lt;x&gt; \\| +30%" in rows[0]  # escaped: no tag swallowed, no broken table
    assert "Alias history" not in model_description("dlrm", {}, [])


def test_lbt_text_says_when_the_value_is_a_lower_bound():
    assert lbt_text(2000.0, True) == "≥ 2,000 qps (capped)"
    assert lbt_text(812.4, False) == "812 qps"
