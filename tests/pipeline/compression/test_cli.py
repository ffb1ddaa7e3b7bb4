"""``python -m recforge.pipeline.compression`` (recforge.pipeline.compression.cli)."""

from __future__ import annotations

import json

from recforge.pipeline.compression.cli import main
from tests.pipeline.compression.compression_testutil import (
    FAST,
)


def test_cli_prints_variants_and_one_line_errors(dlrm_dir, features, tmp_path, capsys):
    config = json.dumps({**FAST, "precisions": ["fp16"]})
    code = main(["--model-dir", str(dlrm_dir), "--features", str(features), "--out", str(tmp_path),
                          "--base", "fp32", "--config", config])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert [v["name"] for v in printed] == ["fp32", "fp32+fp16"]
    code = main(["--model-dir", str(dlrm_dir), "--features", str(features), "--out", str(tmp_path),
                          "--config", '{"prune_ratio": 0.5}'])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: CompressConfig: unknown key") and err.count("\n") == 1
    code = main(["--model-dir", str(tmp_path / "nope"), "--features", str(features), "--out", str(tmp_path),
                          "--base", "fp32"])
    assert code == 1 and "not a model folder" in capsys.readouterr().err
