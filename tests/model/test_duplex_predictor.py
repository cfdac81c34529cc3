import torch

from minmo.model.config import DuplexPredictorConfig, load_config
from minmo.model.duplex_predictor import DuplexPredictor, DuplexPredictorState


def _predictor() -> DuplexPredictor:
    torch.manual_seed(0)
    return DuplexPredictor(load_config("tiny").duplex_predictor).eval()


def test_chunked_predictions_equal_offline():
    predictor = _predictor()
    hidden = torch.randn(1, 11, predictor.cfg.llm_dim)
    offline = predictor(hidden).softmax(-1)
    state = predictor.init_state()
    start = 0
    with torch.no_grad():
        for size in (2, 3, 1, 5):
            probs, state = predictor.step(hidden[:, start : start + size], state)
            start += size
            # float32 attention over at most 11 positions: differences are rounding only
            torch.testing.assert_close(probs, offline[:, start - 1], atol=1e-5, rtol=1e-5)
    assert state.position == 11


def test_state_round_trip_gives_identical_next_step():
    predictor = _predictor()
    hidden = torch.randn(1, 6, predictor.cfg.llm_dim)
    with torch.no_grad():
        _, state = predictor.step(hidden[:, :4], predictor.init_state())
        restored = DuplexPredictorState.from_bytes(state.to_bytes())
        expected, _ = predictor.step(hidden[:, 4:], state)
        actual, _ = predictor.step(hidden[:, 4:], restored)
    assert torch.equal(expected, actual)


def test_probabilities_cover_the_four_duplex_classes():
    predictor = _predictor()
    with torch.no_grad():
        probs, _ = predictor.step(torch.randn(2, 3, predictor.cfg.llm_dim), predictor.init_state(2))
    assert probs.shape == (2, 4)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
    assert set(predictor.classes) >= {"keep_listening", "respond", "stop_speaking", "backchannel"}


def test_minmo_8b_predictor_size_matches_the_paper():
    with torch.device("meta"):
        predictor = DuplexPredictor(DuplexPredictorConfig())
    count = sum(p.numel() for p in predictor.parameters())
    assert abs(count - 18e6) / 18e6 < 0.15, count
