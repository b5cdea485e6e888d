"""Build hook of pixelgate-client: the pixelgate.v1 stubs come from the protos at build time.

Everything declarative is in pyproject.toml. This file adds what cannot be declared:
- `build_py` runs grpc_tools.protoc (with mypy-protobuf for the `.pyi` files) on
  the contract and writes the stubs, the `.proto` files and a descriptor set with
  the protos' comments (server reflection serves it) into the wheel's pixelgate/v1;
  an editable install generates them in place, beside the protos, as `make proto` does;
- `sdist` carries a copy of the protos, so an sdist builds without the repository;
- the grpcio and protobuf floors are the ones the generator itself declares: the
  generated code refuses to import on an older runtime than the one it was made for.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import requires
from pathlib import Path

from setuptools import find_namespace_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
# In the repository the contract lives beside client/; an sdist (which has a
# PKG-INFO at its top) carries its own copy.
PROTO_ROOT = HERE / "protos" if (HERE / "PKG-INFO").is_file() else HERE.parent / "protos"
STUBS_PACKAGE = "pixelgate.v1"
STUBS_DIR = Path(*STUBS_PACKAGE.split("."))
DESCRIPTOR_SET = "descriptor_set.binpb"  # the name server/pixelgate/server/reflection.py reads

DEPENDENCIES = [
    "grpcio-health-checking>=1.66",
    "googleapis-common-protos>=1.63",  # google.rpc: the servers' rich error details
    "httpx>=0.27",
    # The W3C trace context of the caller's current span goes with each call (API only:
    # the application brings its SDK, or has none).
    "opentelemetry-api>=1.27",
    "tqdm>=4.66",
]
"""What the client library and CLI import, besides the generated code's runtime."""


def generated_code_runtime() -> list[str]:
    """grpcio-tools' own grpcio and protobuf requirements: what the stubs it writes need."""
    wanted = {"grpcio", "protobuf"}
    found = [
        line
        for line in requires("grpcio-tools") or []
        if ";" not in line and _requirement_name(line) in wanted
    ]
    if {_requirement_name(line) for line in found} != wanted:
        raise RuntimeError(f"grpcio-tools does not declare both of {sorted(wanted)}: {found}")
    return sorted(found)


def _requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement.strip())
    return match.group(0).lower().replace("_", "-") if match else ""


def proto_files() -> list[Path]:
    """The contract's files, relative to PROTO_ROOT (as protoc names them)."""
    found = sorted((PROTO_ROOT / STUBS_DIR).glob("*.proto"))
    if not found:
        raise RuntimeError(f"no .proto files in {PROTO_ROOT / STUBS_DIR}")
    return [path.relative_to(PROTO_ROOT) for path in found]


def generate_stubs(out_root: Path) -> None:
    """Messages, services, their `.pyi` stubs and the documented descriptor set under out_root."""
    out_root = out_root.resolve()  # protoc runs in PROTO_ROOT
    (out_root / STUBS_DIR).mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        "--include_source_info",
        "--include_imports",
        f"--descriptor_set_out={out_root / STUBS_DIR / DESCRIPTOR_SET}",
        *(str(path) for path in proto_files()),
    ]
    subprocess.run(command, check=True, cwd=PROTO_ROOT)  # noqa: S603 (our own arguments)


def _plugin(name: str) -> str:
    # pip puts an isolated build environment's scripts on PATH; a venv used without
    # build isolation may not be activated, so look beside its interpreter too.
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        raise RuntimeError(f"{name} not found: mypy-protobuf is a build requirement")
    return found


class BuildPyWithStubs(build_py):
    """build_py that also generates the pixelgate.v1 stubs from the protos."""

    def run(self) -> None:
        """A wheel gets fresh stubs in its build tree; an editable install, in the protos' tree."""
        if self.editable_mode:
            generate_stubs(PROTO_ROOT)
            return
        super().run()
        out_dir = Path(self.build_lib) / STUBS_DIR
        shutil.rmtree(out_dir, ignore_errors=True)  # nothing stale from an earlier build
        generate_stubs(Path(self.build_lib))
        for proto in proto_files():
            shutil.copy2(PROTO_ROOT / proto, out_dir / proto.name)
        (out_dir / "py.typed").touch()  # type checkers read the generated .pyi files

    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        """No module of pixelgate.v1 is copied from the protos' folder: they are generated."""
        if package == STUBS_PACKAGE:
            return []
        modules: list[tuple[str, str, str]] = super().find_package_modules(package, package_dir)
        return modules

    def find_data_files(self, package: str, src_dir: str) -> list[str]:
        """Nor any data file (such as a `.pyi` left by `make proto`), in a wheel or an sdist."""
        if package == STUBS_PACKAGE:
            return []
        files: list[str] = super().find_data_files(package, src_dir)
        return files


class SdistWithProtos(sdist):
    """sdist that carries the protos, so that building from it needs no repository."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        """The usual tree, plus protos/pixelgate/v1/*.proto."""
        super().make_release_tree(base_dir, files)
        for proto in proto_files():
            target = Path(base_dir, "protos", proto)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROTO_ROOT / proto, target)


setup(
    packages=[
        *find_namespace_packages(where=str(HERE), include=["pixelgate.client*"]),
        STUBS_PACKAGE,
    ],
    # pixelgate.v1 is mapped to the protos' folder so that an editable install imports the
    # stubs generated there; a wheel never copies from it (find_package_modules above).
    package_dir={STUBS_PACKAGE: os.path.relpath(PROTO_ROOT / STUBS_DIR, HERE)},
    install_requires=[*generated_code_runtime(), *DEPENDENCIES],
    cmdclass={"build_py": BuildPyWithStubs, "sdist": SdistWithProtos},
)
