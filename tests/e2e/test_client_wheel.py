"""The two distributions: a caller installs the client wheel alone and it works.

Both wheels are built from a copy of this checkout's sources (the client's build
generates the pixelgate.v1 stubs from protos/). The client wheel goes into a fresh
virtual environment with its dependencies from the package index, and that environment's
`pixelgate` CLI and library then call a real server over mTLS: no torch, no server code,
no repository on its path.
The build and the environment are made once per session. `-m 'not wheels'` skips these.
"""

from __future__ import annotations

import email.parser
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from packaging.requirements import Requirement
from PIL import Image

from pixelgate.dev.pki import DevPkiFiles
from pixelgate.server.api.reflection import documented_files

pytestmark = [pytest.mark.wheels, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
CLIENT_DIST = "pixelgate-client"
SERVER_DIST = "pixelgate"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NOT_FOR_CALLERS = ("torch", "diffusers", "transformers", "pixelgate.server", "pixelgate.dev")
"""What the client environment must not be able to import."""
SOURCES = ("protos", "server", "client", "pyproject.toml", "README.md")
"""What the two builds read: a copy of these is built, never the checkout in place."""
SETUP_TIMEOUT_S = 400
"""Building both wheels, or installing the client's dependencies (a cold pip cache)."""
CALL_TIMEOUT_S = 60


def _wheel_name(dist: str) -> str:
    return dist.replace("-", "_")


def _caller_env() -> dict[str, str]:
    """The environment without anything that points Python at this checkout or sets a default."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    return {
        key: value
        for key, value in os.environ.items()
        if key not in drop and not key.startswith("PIXELGATE_")
    }


def _run(command: list[str], timeout: float, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
        env=_caller_env(),
    )


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        [name] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(archive.read(name).decode())


def _files(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both wheels, built from this checkout as `make wheels` builds them, by distribution."""
    # setuptools builds in the source tree and keeps its build/ between builds (a file
    # since moved away would ship again): a clean copy keeps the checkout out of it.
    sources = tmp_path_factory.mktemp("sources")
    leftovers = shutil.ignore_patterns("__pycache__", "build", "dist", "*.egg-info")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, sources / name, ignore=leftovers)
        else:
            shutil.copy2(ROOT / name, sources / name)
    out = tmp_path_factory.mktemp("wheels")
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir"]
    built = _run(
        [*pip_wheel, str(out), str(sources / "client"), str(sources)],
        timeout=SETUP_TIMEOUT_S,
        cwd=sources,
    )
    assert built.returncode == 0, built.stderr
    return {
        dist: next(out.glob(f"{_wheel_name(dist)}-*.whl")) for dist in (CLIENT_DIST, SERVER_DIST)
    }


@pytest.fixture(scope="session")
def caller_bin(wheels: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ of a fresh virtual environment holding the client wheel and its dependencies."""
    venv = tmp_path_factory.mktemp("caller") / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], CALL_TIMEOUT_S, ROOT)
    assert made.returncode == 0, made.stderr
    # This interpreter's pip installs into the new environment (it needs no pip of its own).
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    installed = _run(
        [*pip, "install", "--quiet", str(wheels[CLIENT_DIST])],
        timeout=SETUP_TIMEOUT_S,
        cwd=venv,
    )
    assert installed.returncode == 0, installed.stderr
    return venv / "bin"


@pytest.fixture
def caller_files(pki: DevPkiFiles, mint: Callable[..., str], tmp_path: Path) -> dict[str, Path]:
    """What a caller is given: the CA, its certificate and key, a token file (every scope)."""
    token_file = tmp_path / "token"
    token_file.write_text(mint())
    return {"ca": pki.ca_cert, "cert": pki.client_cert, "key": pki.client_key, "token": token_file}


def test_the_client_environment_cannot_import_torch_or_the_server(caller_bin: Path, tmp_path: Path):
    """`import torch` fails there, and so do diffusers, transformers and pixelgate.server."""
    torch = _run([str(caller_bin / "python"), "-c", "import torch"], CALL_TIMEOUT_S, tmp_path)
    assert torch.returncode != 0
    assert "No module named 'torch'" in torch.stderr

    probe = textwrap.dedent(
        """
        import importlib.util, json, sys
        import pixelgate.client, pixelgate.client.cli, pixelgate.v1.image_service_pb2_grpc
        names = sys.argv[1:]
        print(json.dumps({name: importlib.util.find_spec(name) is not None for name in names}))
        """
    )
    found = _run(
        [str(caller_bin / "python"), "-c", probe, *NOT_FOR_CALLERS], CALL_TIMEOUT_S, tmp_path
    )
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout) == dict.fromkeys(NOT_FOR_CALLERS, False)


def test_the_clients_stubs_come_typed_and_with_the_documented_descriptor_set(
    caller_bin: Path, tmp_path: Path
):
    """pixelgate.v1 has .pyi stubs, py.typed, and a descriptor set with comments where reflection
    looks for it."""
    where = _run(
        [
            str(caller_bin / "python"),
            "-c",
            "from pathlib import Path; from pixelgate.v1 import image_service_pb2 as pb;"
            " print(Path(pb.__file__).parent)",
        ],
        CALL_TIMEOUT_S,
        tmp_path,
    )
    assert where.returncode == 0, where.stderr
    stubs = Path(where.stdout.strip())
    assert {"image_service_pb2.pyi", "image_service_pb2_grpc.pyi", "py.typed"} <= {
        path.name for path in stubs.iterdir()
    }
    # The server finds the set beside image_service_pb2 (reflection.documented_files).
    documented = documented_files(stubs / "descriptor_set.binpb")
    image_service = descriptor_pb2.FileDescriptorProto.FromString(
        documented["pixelgate/v1/image_service.proto"]
    )
    assert any(location.leading_comments for location in image_service.source_code_info.location)


def test_the_client_wheels_cli_and_library_call_a_real_server_over_mtls(
    caller_bin: Path,
    server: Any,
    connect: Callable[..., Any],
    caller_files: dict[str, Path],
    tmp_path: Path,
):
    """That environment's `pixelgate models` and `generate`, and PixelgateClient, all work."""
    [model] = connect(server).list_models()
    pixelgate = [
        str(caller_bin / "pixelgate"),
        f"--target={server.target}",
        f"--ca={caller_files['ca']}",
        f"--cert={caller_files['cert']}",
        f"--key={caller_files['key']}",
        f"--token-file={caller_files['token']}",
    ]
    models = _run([*pixelgate, "models"], CALL_TIMEOUT_S, tmp_path)
    assert models.returncode == 0, models.stderr
    assert models.stdout.startswith(f"{model.id} (default)")

    generate = [*pixelgate, "generate", "a lighthouse", "--steps=2", "--seed=7", "-o", "cli.png"]
    generated = _run(generate, CALL_TIMEOUT_S, tmp_path)
    assert generated.returncode == 0, generated.stderr
    assert (tmp_path / "cli.png").read_bytes().startswith(PNG_MAGIC)
    with Image.open(tmp_path / "cli.png") as decoded:
        assert decoded.size == (model.default_width, model.default_height)

    library = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from pixelgate.client import PixelgateClient

        target, ca, cert, key, token, out = sys.argv[1:]
        with PixelgateClient(
            target, ca_file=Path(ca), cert_file=Path(cert), key_file=Path(key), token=Path(token)
        ) as client:
            [image] = client.generate("a red fox in the snow", steps=2, seed=7)
        Path(out).write_bytes(image.data)
        """
    )
    files = [caller_files[name] for name in ("ca", "cert", "key", "token")]
    ran = _run(
        [str(caller_bin / "python"), "-c", library, server.target, *map(str, files), "lib.png"],
        CALL_TIMEOUT_S,
        tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "lib.png").read_bytes().startswith(PNG_MAGIC)


def test_the_server_wheel_needs_this_client_release_and_owns_none_of_its_files(
    wheels: dict[str, Path],
):
    """The server pins pixelgate-client to its own version; no file is in both wheels."""
    client, server = _metadata(wheels[CLIENT_DIST]), _metadata(wheels[SERVER_DIST])
    assert client["Version"] == server["Version"]
    assert f"{CLIENT_DIST}=={client['Version']}" in server.get_all("Requires-Dist", [])

    client_files, server_files = _files(wheels[CLIENT_DIST]), _files(wheels[SERVER_DIST])
    assert "pixelgate/server/app.py" in server_files
    assert "pixelgate/v1/image_service_pb2.py" in client_files
    for name in server_files:
        assert not name.startswith(("pixelgate/v1/", "pixelgate/client/")), name
    for name in client_files:
        assert not name.startswith(("pixelgate/server/", "pixelgate/dev/")), name
    client_needs = {Requirement(line).name for line in client.get_all("Requires-Dist", [])}
    assert not client_needs & {"torch", "diffusers", "transformers", SERVER_DIST}
