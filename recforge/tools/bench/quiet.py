"""Silence around ``torch.onnx.export``: the dynamo exporter and onnxscript print hundreds of progress lines,
warnings and log records per model, which would bury the benchmark's own progress and results."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator

EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "torch._export", "torch.fx", "onnxscript", "onnx_ir")

log = logging.getLogger(__name__)


@contextlib.contextmanager
def quiet_onnx_export() -> Iterator[None]:
    """Run the block with the exporter's stdout/stderr captured, its warnings ignored and its loggers at ERROR;
    what it printed is logged at DEBUG (and re-raised errors stay as they were)."""
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    captured = io.StringIO()
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if captured.getvalue():
            log.debug("ONNX exporter output:\n%s", captured.getvalue())
