"""`minmo eval turn-taking` over the five services: the same spoken turns with the VAD deciding and with a trained
predictor deciding (real `tiny` predictor weights set to keep listening whatever it hears, as in
test_full_duplex.py, so the test knows what it decides).

The VAD ends the turn after its 500 ms silence, so it cuts in at a 0.8 s pause mid-sentence. The predictor's
session ends the segment after 200 ms and asks the predictor, and this one keeps listening: no cut-in, and the
turn is answered after the user's patience wait. What a trained predictor decides is `minmo eval duplex`'s.
"""

from __future__ import annotations

from pathlib import Path

from minmo.duplex.turn_policy import PATIENCE_MS
from minmo.load.turn_taking import Trial, print_summary, run_trial, speak, summarise
from minmo.train.voices import HELD_OUT_VOICES, available

from .test_full_duplex import _stack_with_predictor


async def test_the_vad_cuts_in_at_a_long_pause_and_the_predictor_decides_instead(stack, tmp_path: Path):
    await _stack_with_predictor(stack, "keep_listening", tmp_path / "ckpt")
    target = stack.address("duplex")
    voice = next(v for v in HELD_OUT_VOICES if available(v)).id
    finished = Trial("finished", voice, ("What is the capital of France?",))
    paused = Trial("paused", voice, ("What is the capital", "of France?"), pause_s=0.8)
    results = []
    for trial in (finished, paused):
        utterance = speak(trial)
        for mode in ("SERVER_VAD", "PREDICTOR"):
            results.append(await run_trial(target, mode, trial, utterance))
    by = {(r.mode, r.kind): r for r in results}
    assert by["SERVER_VAD", "finished"].silence_ms == 500 and by["PREDICTOR", "finished"].silence_ms == 200
    assert not by["SERVER_VAD", "finished"].cut_in and by["SERVER_VAD", "finished"].first_text_ms is not None
    assert by["SERVER_VAD", "paused"].cut_in, "a 0.8 s pause is longer than the VAD's silence"
    assert by["SERVER_VAD", "paused"].taken_ms is not None, "the rest of the sentence is answered too"
    for kind in ("finished", "paused"):
        kept_listening = by["PREDICTOR", kind]
        assert not kept_listening.cut_in, f"{kind}: the predictor, not the silence, decides"
        assert kept_listening.taken_ms >= PATIENCE_MS * 0.9, f"{kind}: answered after the patience wait"
    summary = summarise(results)
    assert summary["SERVER_VAD"]["cut_in_at_pause"] == 1.0 and summary["PREDICTOR"]["cut_in_at_pause"] == 0.0
    print_summary(summary)
