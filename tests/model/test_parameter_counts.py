"""`minmo model params`: the minmo-8b config matches the paper's Table 1 (counted on the meta device)."""

import json

import pytest
from typer.testing import CliRunner

from minmo.cli import app

PAPER_SIZES = {
    "voice_encoder": 636e6,
    "input_projector": 170e6,
    "llm": 7.6e9,
    "output_projector": 6e6,
    "voice_token_lm": 370e6,
    "duplex_predictor": 18e6,
}
TOLERANCE = 0.15  # the bound; our counts are within 7% (output projector: 2*3584*896 = 6.4M)


@pytest.fixture(scope="module")
def counts() -> dict[str, int]:
    result = CliRunner().invoke(app, ["model", "params", "--config", "minmo-8b"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_every_paper_module_is_counted(counts):
    assert set(counts) == {*PAPER_SIZES, "token2wav"}


@pytest.mark.parametrize("module", sorted(PAPER_SIZES))
def test_module_size_matches_the_paper(counts, module):
    assert abs(counts[module] - PAPER_SIZES[module]) / PAPER_SIZES[module] <= TOLERANCE, counts[module]
