"""Build hook: generate the protobuf/gRPC modules from protos/ into fleet_actors/_generated, and
build the compiled decoder (fleet_actors/codec/_wire.c) and the bulk reads' frame scanner
(fleet_actors/adapters/jetstream/_frames.c) where a C compiler is found.

The generated code is never committed nor edited by hand; every build (wheel or editable
install) produces it from the .proto sources with the pinned grpcio-tools.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent.resolve()
PROTO_ROOT = ROOT / "protos"
OUT = ROOT / "fleet_actors" / "_generated"


def generate_protos() -> None:
    import grpc_tools
    from grpc_tools import protoc

    OUT.mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    well_known = str(Path(grpc_tools.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={OUT}",
        f"--pyi_out={OUT}",
        f"--grpc_python_out={OUT}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed for {protos}")
    # protoc writes cross-file imports as top-level `fleet.context.v1`; anchor them under our
    # package so that no top-level `fleet` module is needed on sys.path.
    for module in OUT.rglob("*.py"):
        text = module.read_text()
        fixed = text.replace("from fleet.context.v1 import", "from fleet_actors._generated.fleet.context.v1 import")
        if fixed != text:
            module.write_text(fixed)
    for folder in [OUT, *[p for p in OUT.rglob("*") if p.is_dir()]]:
        (folder / "__init__.py").touch()


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        generate_protos()
        super().run()


# The compiled decoder of stored events and snapshots (fleet_actors/codec/_wire.c). Optional: where it
# cannot be built (no C compiler), the package decodes with the protobuf runtime alone, slower
# (fleet_actors/codec/wire.py says which at run time).
WIRE = Extension("fleet_actors.codec._wire", ["fleet_actors/codec/_wire.c"], optional=True)
# The scanner that cuts bulk reads' messages out of nats-py's read buffer (adapters/jetstream/_frames.c).
# Optional too: without it, those messages take nats-py's parser (adapters/jetstream/nats_client.py).
FRAMES = Extension(
    "fleet_actors.adapters.jetstream._frames", ["fleet_actors/adapters/jetstream/_frames.c"], optional=True
)

setup(cmdclass={"build_py": BuildPyWithProtos}, ext_modules=[WIRE, FRAMES])
