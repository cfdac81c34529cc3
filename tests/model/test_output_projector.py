"""Output projector: one linear layer on concat(LLM hidden, token embedding), paper-sized for minmo-8b."""

from __future__ import annotations

import torch

from minmo.model.config import load_config
from minmo.model.output_projector import OutputProjector

PAPER_PARAMS = 6e6
PARAM_TOLERANCE = 0.15


def test_projects_concatenated_hidden_and_embedding() -> None:
    torch.manual_seed(0)
    cfg = load_config("tiny").output_projector
    projector = OutputProjector(cfg)
    hidden, embedding = torch.randn(2, 7, cfg.llm_dim), torch.randn(2, 7, cfg.llm_dim)
    out = projector(hidden, embedding)
    assert out.shape == (2, 7, cfg.output_dim)
    weight, bias = projector.proj.weight, projector.proj.bias
    expected = hidden @ weight[:, : cfg.llm_dim].T + embedding @ weight[:, cfg.llm_dim :].T + bias
    torch.testing.assert_close(out, expected)


def test_position_wise_so_chunking_is_free() -> None:
    """No state: projecting a chunk at a time equals projecting the whole turn."""
    cfg = load_config("tiny").output_projector
    projector = OutputProjector(cfg)
    hidden, embedding = torch.randn(1, 9, cfg.llm_dim), torch.randn(1, 9, cfg.llm_dim)
    chunked = torch.cat([projector(hidden[:, i : i + 2], embedding[:, i : i + 2]) for i in range(0, 9, 2)], dim=1)
    torch.testing.assert_close(chunked, projector(hidden, embedding))


def test_minmo_8b_parameter_count() -> None:
    with torch.device("meta"):
        projector = OutputProjector(load_config("minmo-8b").output_projector)
    count = sum(p.numel() for p in projector.parameters())
    assert count == 2 * 3584 * 896 + 896
    assert abs(count - PAPER_PARAMS) <= PARAM_TOLERANCE * PAPER_PARAMS
