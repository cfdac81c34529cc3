"""MINMO_TORCH_THREADS: model services that share cores each get their share of torch threads (ServerSettings)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from minmo.services.encoder.main import EncoderSettings, start
from minmo.serving.settings import ServerSettings, SettingsError
from minmo.serving.stack import shared_torch_threads


def test_the_variable_is_read_and_checked() -> None:
    assert ServerSettings.from_env(50051, environ={}).torch_threads == 0
    assert ServerSettings.from_env(50051, environ={"MINMO_TORCH_THREADS": "3"}).torch_threads == 3
    with pytest.raises(SettingsError, match="MINMO_TORCH_THREADS"):
        ServerSettings.from_env(50051, environ={"MINMO_TORCH_THREADS": "-1"})


def test_a_local_stack_splits_the_cores_between_its_four_model_services() -> None:
    assert [shared_torch_threads(cores) for cores in (1, 2, 4, 8, 16)] == [1, 1, 1, 2, 4]


def test_a_model_service_runs_torch_with_the_threads_it_was_given() -> None:
    before = torch.get_num_threads()
    wanted = 1 if before > 1 else 2
    server = ServerSettings(port=0, model_config="tiny", grace_s=1.0, torch_threads=wanted)

    async def serve_once() -> int:
        host = await start(EncoderSettings(server=server, max_chunk_ms=2000, checkpoint=None))
        try:
            return torch.get_num_threads()
        finally:
            await host.stop()

    try:
        assert asyncio.run(serve_once()) == wanted
    finally:
        torch.set_num_threads(before)
