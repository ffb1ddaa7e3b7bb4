"""The ``tritonserver`` installation of the nvidia-pytriton wheel: finding the binary, preparing the backend
directory (python backend + the 3.11 stub, copied under ``$RECFORGE_HOME/triton/backends``) and the environment
the server process needs."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from recforge.core.config import recforge_home
from recforge.core.errors import ConfigError
from recforge.core.hashing import sha256_file

STUB_PYTHON = "3.11"  # the stub must match the interpreter whose packages it embeds (the venv's)
PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")


def pytriton_dir() -> Path:
    """The installed ``pytriton`` package folder (found without importing it)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("nvidia-pytriton is not installed in this environment; run `make setup` "
                          "(it pins nvidia-pytriton, which ships the tritonserver binary)")
    return Path(next(iter(spec.submodule_search_locations)))


def tritonserver_binary() -> Path:
    """``site-packages/pytriton/tritonserver/bin/tritonserver``; ConfigError when it is missing."""
    path = pytriton_dir() / "tritonserver" / "bin" / "tritonserver"
    if not path.is_file() or not os.access(path, os.X_OK):
        raise ConfigError(f"tritonserver binary {path} is missing or not executable; reinstall nvidia-pytriton "
                          "(`make setup`)")
    return path


def server_libs_dir() -> Path:
    """The wheel's bundled shared libraries (the copied backend files find them through LD_LIBRARY_PATH)."""
    return pytriton_dir().parent / "nvidia_pytriton.libs"


def stub_source(python_version: str = STUB_PYTHON) -> Path:
    path = pytriton_dir() / "tritonserver" / "python_backend_stubs" / python_version / "triton_python_backend_stub"
    if not path.is_file():
        raise ConfigError(f"python backend stub for Python {python_version} is missing at {path}; reinstall "
                          "nvidia-pytriton")
    return path


def check_installation() -> tuple[bool, str]:
    """(True, "") when a Triton server can be started here, else (False, why) on one line."""
    if sys.version_info[:2] != tuple(int(x) for x in STUB_PYTHON.split(".")):
        return False, (f"the python backend stub is for Python {STUB_PYTHON}, this interpreter is "
                       f"{sys.version_info.major}.{sys.version_info.minor}")
    try:
        tritonserver_binary()
        stub_source()
        source = pytriton_dir() / "tritonserver" / "backends" / "python"
        for name in PYTHON_BACKEND_FILES:
            if not (source / name).is_file():
                return False, f"python backend file {source / name} is missing; reinstall nvidia-pytriton"
    except ConfigError as err:
        return False, str(err)
    if not server_libs_dir().is_dir():
        return False, f"{server_libs_dir()} (the wheel's bundled libraries) is missing; reinstall nvidia-pytriton"
    if importlib.util.find_spec("onnxruntime") is None:
        return False, "onnxruntime is not installed: the python-backend model.py needs it"
    return True, ""


def _same_file(a: Path, b: Path) -> bool:
    if not b.is_file() or a.stat().st_size != b.stat().st_size:
        return False
    return sha256_file(a) == sha256_file(b)


def backends_dir(home: str | Path | None = None) -> Path:
    return Path(home if home is not None else recforge_home()) / "triton" / "backends"


def prepare_backends(home: str | Path | None = None) -> Path:
    """The ``--backend-directory`` for the server: ``<home>/triton/backends/python/`` with copies of the wheel's
    python backend and the 3.11 stub (refreshed when they differ; written atomically, so concurrent callers
    are safe). ``home`` defaults to RECFORGE_HOME."""
    ok, why = check_installation()
    if not ok:
        raise ConfigError(f"cannot prepare the Triton backends: {why}")
    source = pytriton_dir() / "tritonserver" / "backends" / "python"
    root = backends_dir(home)
    target = root / "python"
    target.mkdir(parents=True, exist_ok=True)
    files = [(source / name, target / name) for name in PYTHON_BACKEND_FILES]
    files.append((stub_source(), target / "triton_python_backend_stub"))
    for src, dst in files:
        if _same_file(src, dst):
            continue
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    return root


def server_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of the server process: this interpreter's bin folder first on PATH (the stub embeds that
    ``python3``) and the wheel's libraries on LD_LIBRARY_PATH."""
    env = dict(os.environ if base is None else base)
    python_bin = str(Path(sys.executable).parent)  # not resolved: the venv's bin, not the base interpreter's
    env["PATH"] = os.pathsep.join([python_bin, *[p for p in env.get("PATH", "").split(os.pathsep) if p]])
    libs = str(server_libs_dir())
    env["LD_LIBRARY_PATH"] = os.pathsep.join([libs, *[p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env

