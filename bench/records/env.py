"""The environment a record was made in: code hash, versions, machine, accelerator, calibration, git state."""
from __future__ import annotations

import datetime
import functools
import hashlib
import importlib.util
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import jax

CODE_DIRS = ("bench", "models", "tasks")
CODE_PATHS = (*CODE_DIRS, "pyproject.toml")
# The code that produces a record's numbers (reports, comparisons and the command line only read them).
NUMBER_CODE = ("models", "tasks", *(f"bench/{m}.py" for m in (
    "spec/build", "engine/loop", "engine/flops", "records/metrics", "spec/optim", "engine/probe", "engine/program",
    "records/cell", "engine/runner", "spec/schema", "spec/suite", "spec/settings", "spec/plugins")))


def code_dirs(root: Path | None = None) -> dict[str, Path]:
    """Each code folder of the repository (CODE_DIRS) -> where it is: under `root`, or where the installed
    gradbench package has it (bench/ is installed as gradbench, models/ and tasks/ as gradbench.models and
    gradbench.tasks)."""
    if root is not None:
        return {d: root / d for d in CODE_DIRS}
    package = Path(__file__).resolve().parents[1]
    return {"bench": package, **{d: Path(importlib.util.find_spec(f"gradbench.{d}").origin).parent
                                 for d in ("models", "tasks")}}


def code_hash(root: Path | None = None) -> str:
    """sha256 over the .py files of NUMBER_CODE (path as in the repository and contents, sorted by path), in the
    repository `root` or, by default, in the installed package (the same hash for an editable install and a
    wheel of the same code)."""
    dirs = code_dirs(root)
    files = []
    for entry in NUMBER_CODE:
        top, _, rest = entry.partition("/")
        found = [dirs[top] / rest] if rest else dirs[top].rglob("*.py")
        files += [(f"{top}/{p.relative_to(dirs[top]).as_posix()}", p) for p in found if "__pycache__" not in p.parts]
    digest = hashlib.sha256()
    for name, path in sorted(files):
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def code_hash_with(base: str, plugins) -> str:
    """The code hash of a run whose suite imports plugins: `base` (`code_hash`) joined with each plugin's name and
    the sha256 of its source (`plugins`: suite.json's entries, or gradbench.spec.plugins.Plugin); `base` unchanged
    without plugins, so a suite without plugins keeps the repository's code hash."""
    entries = sorted((p["name"], p["sha256"]) if isinstance(p, dict) else (p.name, p.sha256) for p in plugins or ())
    if not entries:
        return base
    digest = hashlib.sha256(base.encode())
    for name, sha in entries:
        digest.update(b"\0plugin\0" + name.encode() + b"\0" + sha.encode())
    return digest.hexdigest()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _plugins() -> dict:
    """Versions of the installed jaxlib plugins (jax-cuda12-plugin, jax-cuda12-pjrt, ...)."""
    names = {d.metadata["Name"] for d in metadata.distributions() if d.metadata["Name"]}
    return {n: _version(n) for n in sorted(names)
            if n.lower().replace("_", "-").startswith(("jax-cuda", "jax-rocm", "jax-tpu", "jax-plugins", "libtpu"))}


def _cuda_versions() -> dict:
    """CUDA driver, runtime and cuDNN versions where jax's CUDA plugin exposes them (empty otherwise)."""
    try:
        from jax._src.lib import cuda_versions
    except ImportError:
        return {}
    out = {}
    for name in ("cuda_driver_get_version", "cuda_runtime_get_version", "cudnn_get_version", "cublas_get_version"):
        try:
            out[name.removesuffix("_get_version")] = int(getattr(cuda_versions, name)())
        except Exception:  # noqa: BLE001  (no plugin, no GPU, or an older plugin without that function)
            pass
    return out


@functools.lru_cache(maxsize=1)
def _static_env() -> dict:
    from gradbench.records import calibrate

    root = Path(__file__).resolve().parents[2]  # the repository: bench/records/env.py

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    devices = jax.devices()
    return {
        "package_version": _version("gradbench"),
        "code_sha256": code_hash(),
        "versions": {p: metadata.version(p) for p in ("jax", "jaxlib", "flax", "optax", "numpy", "scipy")},
        "jax_plugins": _plugins(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "platform_version": getattr(devices[0].client, "platform_version", None),
        "cuda": _cuda_versions(),
        "default_matmul_precision": jax.config.jax_default_matmul_precision,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "matmul_flops_per_s": calibrate.matmul_flops_per_s(),
        "scan_flops_per_s": calibrate.scan_flops_per_s(),
        "git_commit": git("rev-parse", "HEAD").strip() or None,
        # Dirty: uncommitted changes to the code that produces the numbers (not to results or docs).
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS).strip()),
    }


LIBRARIES = ("jax", "jaxlib", "flax", "optax", "numpy")  # the libraries whose versions can change a record's numbers


@functools.lru_cache(maxsize=1)
def provenance() -> dict:
    """What a record's numbers depend on besides its config: the code hash, the libraries' versions and Python's
    (as `environment` records them; cheap: nothing is timed and no backend is started)."""
    return {"code_sha256": code_hash(), "versions": {p: _version(p) for p in LIBRARIES},
            "python": platform.python_version()}


def provenance_differences(env: dict, current: dict) -> list[str]:
    """`key recorded -> current` for each provenance value (`provenance`) in which a record's env differs."""
    recorded = {"code_sha256": env.get("code_sha256"), "python": env.get("python"),
                **{f"{p}": (env.get("versions") or {}).get(p) for p in LIBRARIES}}
    now = {"code_sha256": current["code_sha256"], "python": current["python"], **current["versions"]}
    short = lambda k, v: v[:12] if k == "code_sha256" and isinstance(v, str) else v  # noqa: E731
    return [f"{'code hash' if k == 'code_sha256' else k} {short(k, recorded[k])} -> {short(k, now[k])}"
            for k in now if recorded[k] != now[k]]


def environment(plugins=()) -> dict:
    """Package version and code hash (joined with the suite's `plugins`' sources: `code_hash_with`), library
    versions, CPU, accelerator, calibration, git commit, timestamp."""
    env = _static_env()
    return {**env, "code_sha256": code_hash_with(env["code_sha256"], plugins),
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
