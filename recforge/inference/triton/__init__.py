"""A real Triton Inference Server on this machine: the ``tritonserver`` of the nvidia-pytriton wheel, started,
health-checked and stopped from Python, plus a small HTTP client and a ``recforge.inference.loadgen`` target.

The wheel ships ``pytriton/tritonserver/bin/tritonserver`` with the **python backend only**. The backend
directory the server is given is prepared under ``$RECFORGE_HOME/triton/backends`` (:func:`prepare_backends`):
``python/`` holds copies of the wheel's ``libtriton_python.so`` and ``triton_python_backend_utils.py`` and the
Python 3.11 ``triton_python_backend_stub`` (from ``python_backend_stubs/3.11/``); site-packages is never
modified. The copies lose their ``$ORIGIN`` rpath, so the server runs with the wheel's
``nvidia_pytriton.libs`` on ``LD_LIBRARY_PATH``. The stub embeds the Python of the ``python3`` first on
``PATH``: this interpreter's ``bin`` folder (the venv, numpy<2 + onnxruntime) is put first, because with
numpy 2.x every python-backend response fails.

:class:`TritonServer` runs one server process (its own process group) on 127.0.0.1 ports; ``wait_ready``
polls ``/v2/health/ready`` and raises with the tail of the server log when the process dies or the wait times
out. :func:`infer` speaks the KServe v2 HTTP protocol with Triton's binary tensor extension (numpy in,
numpy out); :class:`TritonHttpTarget` is the load generator's target for a model served by Triton.

The modules: ``install`` (the binary, the backend directory, the server's environment), ``server``
(:class:`TritonServer`), ``client`` (HTTP inference and repository API), ``load_target`` (:class:`TritonHttpTarget`),
``errors`` (:class:`TritonError`), ``cli`` (``python -m recforge.inference.triton --help``: serve, check, infer).
This package exports the public names of all of them.
``perf_analyzer`` (Triton's own load tool: valid input rows, one run, its output parsed) is imported from its module.
"""

from recforge.inference.triton.client import (
    NUMPY_DTYPES,
    V2_DATATYPES,
    decode_response,
    encode_request,
    infer,
    load_model,
    model_config,
    model_ready,
    repository_index,
    unload_model,
)
from recforge.inference.triton.errors import TritonError
from recforge.inference.triton.install import (
    STUB_PYTHON,
    backends_dir,
    check_installation,
    prepare_backends,
    pytriton_dir,
    server_env,
    server_libs_dir,
    stub_source,
    tritonserver_binary,
)
from recforge.inference.triton.load_target import TritonHttpTarget
from recforge.inference.triton.server import TritonServer

__all__ = [
    "NUMPY_DTYPES", "STUB_PYTHON", "V2_DATATYPES", "TritonError", "TritonHttpTarget", "TritonServer", "backends_dir",
    "check_installation", "decode_response", "encode_request", "infer", "load_model", "model_config", "model_ready",
    "prepare_backends", "pytriton_dir", "repository_index", "server_env", "server_libs_dir", "stub_source",
    "tritonserver_binary", "unload_model",
]
