"""``python -m recforge.inference.triton``: serve a model repository, check the installation, send one request.

::

    python -m recforge.inference.triton serve --repo REPO [--http-port 8000] [--grpc-port 8001] [--metrics-port 8002]
        [--model-control none|explicit] [--load-model M ...]      # foreground until Ctrl-C
    python -m recforge.inference.triton check                                # is the server runnable here?
    python -m recforge.inference.triton infer --url URL --model M --spec SPEC.json [--batch 4]
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recforge.core.cli import run_step
from recforge.core.errors import ConfigError
from recforge.inference.loadgen import load_spec
from recforge.inference.model_repo import verify_model_repository
from recforge.inference.triton.client import infer
from recforge.inference.triton.errors import TritonError
from recforge.inference.triton.install import check_installation, prepare_backends, tritonserver_binary
from recforge.inference.triton.server import TritonServer
from recforge.models.export import example_inputs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.inference.triton",
                                     description="A real Triton Inference Server on this machine.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run tritonserver in the foreground until Ctrl-C / SIGTERM")
    serve.add_argument("--repo", required=True, help="model repository folder")
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--model-control", choices=("none", "explicit"), default="none")
    serve.add_argument("--load-model", action="append", default=[], help="with --model-control explicit")
    serve.add_argument("--log", default=None, help="server log file (default <repo>/../tritonserver.log)")
    serve.add_argument("--skip-verify", action="store_true", help="serve without checking model.onnx hashes")
    sub.add_parser("check", help="say whether a Triton server can be started here")
    inf = sub.add_parser("infer", help="one request with example inputs of a spec; prints the outputs")
    inf.add_argument("--url", required=True)
    inf.add_argument("--model", required=True)
    inf.add_argument("--spec", required=True)
    inf.add_argument("--batch", type=int, default=4)
    args = parser.parse_args(argv)

    def step() -> Any:
        if args.command == "check":
            ok, why = check_installation()
            if not ok:
                raise ConfigError(why)
            return {"tritonserver": str(tritonserver_binary()), "backends": str(prepare_backends())}
        if args.command == "infer":

            feed = {k: v.numpy() for k, v in example_inputs(load_spec(args.spec), args.batch).items()}
            return {k: v.tolist() for k, v in infer(args.url, args.model, feed).items()}
        repo = Path(args.repo)
        if not args.skip_verify:

            verify_model_repository(repo)
        server = TritonServer(repo, http_port=args.http_port, grpc_port=args.grpc_port,
                              metrics_port=args.metrics_port, model_control=args.model_control,
                              load_models=args.load_model,
                              log_path=args.log or repo.resolve().parent / "tritonserver.log")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with server:
            print(f"tritonserver ready in {server.ready_after_s:.1f} s: {server.url} (metrics {server.metrics_url},"
                  f" log {server.log_path}); Ctrl-C stops it", flush=True)
            try:
                while not stop.is_set() and server.alive():
                    stop.wait(1.0)
            except KeyboardInterrupt:
                pass
            if not server.alive():
                raise TritonError(f"tritonserver exited with code {server.process.returncode}:\n{server.log_tail()}")
        return None

    return run_step(step)

