"""Generate the Python protobuf/gRPC stubs for `protos/minmo/v1/*.proto`.

    python -m minmo.api.generate              # writes shared/minmo/v1/*_pb2*.py(i)
    python -m minmo.api.generate --out DIR    # writes DIR/minmo/v1/*_pb2*.py(i)

protoc runs with `-I protos`, so `protos/minmo/v1/x.proto` (package `minmo.v1`) becomes
`minmo/v1/x_pb2.py` under the output root, importable as `minmo.v1.x_pb2`.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parents[3]
PROTO_ROOT = REPO_ROOT / "protos"
OUTPUT_ROOT = REPO_ROOT / "shared"
API_PACKAGE = Path("minmo") / "v1"
GENERATED_PATTERNS = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py")


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    """The API's .proto files, relative to `proto_root`, in a stable order."""
    files = sorted((proto_root / API_PACKAGE).glob("*.proto"))
    if not files:
        raise FileNotFoundError(f"no .proto files under {proto_root / API_PACKAGE}")
    return [f.relative_to(proto_root) for f in files]


def generated_files(out_root: Path) -> list[Path]:
    """Generated stub files under `out_root/minmo/v1`, relative to that folder, sorted."""
    package_dir = out_root / API_PACKAGE
    found = {p for pattern in GENERATED_PATTERNS for p in package_dir.glob(pattern)}
    return sorted(p.relative_to(package_dir) for p in found)


def _run_protoc(args: list[str], proto_root: Path) -> None:
    well_known = resources.files("grpc_tools") / "_proto"
    argv = ["grpc_tools.protoc", f"-I{proto_root}", f"-I{well_known}", *args]
    argv += [str(f) for f in proto_files(proto_root)]
    if protoc.main(argv) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(argv)}")


def generate(out_root: Path = OUTPUT_ROOT, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Write `*_pb2.py`, `*_pb2.pyi` and `*_pb2_grpc.py` under `out_root/minmo/v1`.

    Stubs left over from .proto files that no longer exist are removed first. Returns the written
    files relative to `out_root/minmo/v1`.
    """
    package_dir = out_root / API_PACKAGE
    package_dir.mkdir(parents=True, exist_ok=True)
    for stale in generated_files(out_root):
        (package_dir / stale).unlink()
    out = str(out_root)
    _run_protoc([f"--python_out={out}", f"--grpc_python_out={out}", f"--pyi_out={out}"], proto_root)
    return generated_files(out_root)


def descriptor_set(out_file: Path, proto_root: Path = PROTO_ROOT) -> Path:
    """Compile the API into a FileDescriptorSet with source info (comments), for checks and tools."""
    _run_protoc([f"--descriptor_set_out={out_file}", "--include_source_info"], proto_root)
    return out_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minmo.api.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUTPUT_ROOT, help="output root (default: %(default)s)")
    parser.add_argument("--protos", type=Path, default=PROTO_ROOT, help="proto root (default: %(default)s)")
    args = parser.parse_args(argv)
    written = generate(args.out, args.protos)
    print(f"wrote {len(written)} files to {args.out / API_PACKAGE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
