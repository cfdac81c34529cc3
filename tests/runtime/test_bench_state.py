"""`minmo bench state` measures real states: the old design's blob grows with the stream (the encoder's left
context was unlimited), while a call now carries its chunk only and the replica keeps a bounded state."""

from typer.testing import CliRunner

from minmo.bench.state import run_state_bench
from minmo.cli import app
from minmo.model.config import load_config

SECONDS = 4.0  # longer than tiny's bounded left context (8 chunks of 160 ms)


def test_state_bench_compares_the_blob_with_the_chunk_and_the_kept_state() -> None:
    cfg = load_config("tiny")
    hops = {hop.hop: hop for hop in run_state_bench("tiny", SECONDS)}
    encoder, vocoder = hops["encoder"], hops["vocoder"]
    assert encoder.chunk_bytes == 2560 * 4 + 2 * cfg.llm.hidden_size * 4, "160 ms of float PCM in, 2 embeddings out"
    assert vocoder.chunk_bytes == 15 * 8 + 15 * 960 * 4, "15 token ids in, their float PCM out"
    for hop in (encoder, vocoder):
        assert hop.before_bytes == hop.chunk_bytes + 2 * hop.blob_bytes and hop.blob_ms > 0
    assert encoder.kept_bytes < encoder.blob_bytes / 2, "the bounded cache is a fraction of the unlimited one"


def test_state_bench_command_prints_both_hops() -> None:
    result = CliRunner().invoke(app, ["bench", "state", "--config", "tiny", "--seconds", "2"])
    assert result.exit_code == 0, result.output
    assert "encoder" in result.output and "vocoder" in result.output and "bytes/call before" in result.output
