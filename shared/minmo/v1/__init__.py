"""Generated protobuf and gRPC stubs for the `minmo.v1` API (from `protos/minmo/v1/*.proto`).

Do not edit the `*_pb2*.py(i)` files by hand: change the .proto files and run `make protos`
(`python -m minmo.api.generate`); tests/test_protos.py fails when the stubs are stale.
"""
