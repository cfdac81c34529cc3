"""MinMo's wire API helpers: the protobuf stub generator and tensor <-> proto conversion.

The generated stubs themselves live in `minmo.v1` (from `protos/minmo/v1/*.proto`).
"""
