"""Serving the `minmo.runtime` models through NVIDIA Triton: model repository export (`repository`), the
python-backend model file (`python_model`) and what it calls (`backend`), the shared tensor contract (`spec`),
and a launcher for the `tritonserver` binary of the nvidia-pytriton wheel (`server`). The client is
`minmo.runtime.triton.TritonRuntime`."""
