"""`minmo data speech-to-speech`: stage 3's examples, the assistant's spoken replies to *spoken* questions.

Stage 2 teaches the voice decoder on the LLM's states after a typed prompt. Served, most turns are spoken: the
LLM's states at the reply then follow the user's audio embeddings (voice encoder and the stage-1 input projector),
and they differ from a typed prompt's. For every spoken question of the stage-1 training data (QA utterances: many
voices, augmented), one row keeps
- `tokens`, `mel`: the reply spoken in the assistant's voice, taken from the stage-2 data when it holds that reply
  (the same text spoken once, the same tokens), else spoken here;
- `hidden`, `embed`: the LLM's last hidden state and the token embedding at each reply token, teacher forced after
  the spoken question exactly as a served spoken turn produces them (`Dialogue.listen`, `begin_response`, then
  `generate_step`'s positions).
The shards have stage 2's layout (`speech_out_data.read_replies` reads them), so stage 3 trains with stage 2's
trainer; the row's `prompt` is what the user said.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from minmo.model.config import load_config
from minmo.train.data import Utterance, read_split
from minmo.train.speech_out_data import missing_shards, read_replies, write_shard


@dataclass(frozen=True)
class SpeechToSpeechDataConfig:
    model: str = "nano"
    data: str = "data/nano"  # stage-1 data folder: the spoken questions (its training split)
    speech: str = "data/nano-speech"  # stage-2 data folder: replies already spoken ("" = speak every reply here)
    tokenizer: str = "runs/nano-tokenizer/export"  # speaks the replies the stage-2 data lacks
    checkpoint: str = ""  # trained speech encoder (input projector) and LLM; "" = the preset's own
    out: str = "data/nano-s2s"
    limit: int = -1  # first N spoken questions only (-1: all)
    shard_size: int = 200
    max_reply_tokens: int = 64
    threads: int = 1


def spoken_questions(data: str | Path, limit: int = -1) -> list[Utterance]:
    """The stage-1 training split's QA utterances whose reply has words to say, in the data's order."""
    questions = [u for u in read_split(data, "train")
                 if u.item.task == "qa" and any(c.isalpha() for c in u.item.target)]
    return questions[: None if limit < 0 else limit]


def build(cfg: SpeechToSpeechDataConfig) -> Path:
    """Write every missing shard of `cfg.out`; returns it."""
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    questions = spoken_questions(cfg.data, cfg.limit)
    shards = [questions[i : i + cfg.shard_size] for i in range(0, len(questions), cfg.shard_size)]
    missing = missing_shards(out, len(shards))
    if not missing:
        return out
    listener = SpokenTurns(cfg)
    with tqdm(total=len(questions), initial=len(questions) - sum(len(shards[n]) for n in missing),
              desc="spoken turns", unit="turn") as bar:
        for number in missing:
            tensors, rows = {}, []
            for utterance in shards[number]:
                example = listener(utterance, cfg.max_reply_tokens)
                bar.update(1)
                if example is None:
                    continue
                tensors |= {f"{utterance.item.id}.{name}": value for name, value in example.items()}
                rows.append({"id": utterance.item.id, "prompt": utterance.item.text, "reply": utterance.item.target})
            write_shard(out, number, rows, tensors)
    return out


class SpokenTurns:
    """The tensors of one stage-3 row: a spoken question heard as served, its reply teacher forced and spoken."""

    def __init__(self, cfg: SpeechToSpeechDataConfig) -> None:
        from minmo.model.build import build_component
        from minmo.model.dialogue import Dialogue
        from minmo.model.tokenizer import load_tokenizer

        self.cfg = cfg
        model_cfg = load_config(cfg.model)
        checkpoint = cfg.checkpoint or None
        self.speech_encoder = build_component(model_cfg, "speech_encoder", checkpoint)
        self.dialogue = Dialogue(
            build_component(model_cfg, "llm", checkpoint),
            build_component(model_cfg, "duplex_predictor", checkpoint),
            load_tokenizer(model_cfg.llm),
        )
        # reply text -> (speech tokens, mel); the stage-2 rows' LLM states are not kept
        self.spoken: dict[str, tuple[torch.Tensor, torch.Tensor]] = (
            {r.reply: (r.tokens, r.mel) for r in read_replies(cfg.speech)} if cfg.speech else {}
        )
        self._speaker = None

    @torch.no_grad()
    def __call__(self, utterance: Utterance, max_reply_tokens: int) -> dict[str, torch.Tensor] | None:
        reply_ids = self.dialogue.tokenizer.encode(utterance.item.target)
        if not reply_ids or len(reply_ids) > max_reply_tokens:
            return None
        tokens, mel = self.reply_speech(utterance.item.target)
        hidden = self.reply_states(self.question_embeddings(utterance), reply_ids)
        embed = self.dialogue.llm.embed(torch.tensor([reply_ids]))[0]
        # copies: the same reply answers many questions, and a shard file holds no tensors that share memory
        return {"tokens": tokens.to(torch.int32), "mel": mel.half().clone(), "hidden": hidden.half(),
                "embed": embed.half()}

    def question_embeddings(self, utterance: Utterance) -> torch.Tensor:
        """The speech encoder's output (1, N, D) for the question: the shard's cached frozen-encoder frames when it
        has them (Whisper), else the encoder on its log-mel; then the trained input projector."""
        encoder = self.speech_encoder
        if utterance.encoded is not None:
            frames = utterance.encoded.float()[None]
        else:
            frames = encoder.voice_encoder(utterance.mel.float()[None])
        return encoder.input_projector(frames)

    def reply_states(self, embeddings: torch.Tensor, reply_ids: list[int]) -> torch.Tensor:
        """(len(reply_ids), D): the LLM's last hidden state at each position that emits a reply token, after the
        spoken user turn, as `generate_step` sees them (the pending assistant-prefix token, then the reply's)."""
        dialogue = self.dialogue
        _, state = dialogue.listen(dialogue.start(""), embeddings)
        state = dialogue.begin_response(state)
        inputs = dialogue.llm.embed(torch.tensor([[state.pending_token, *reply_ids[:-1]]]))
        output, _ = dialogue.llm.step(inputs, state.llm)
        return output.hidden[0]

    def reply_speech(self, reply: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Speech tokens and mel of `reply`: the stage-2 data's, else spoken now (and kept for its next question)."""
        if reply not in self.spoken:
            from minmo.train.speech_out_data import ReplySpeaker

            if self._speaker is None:
                self._speaker = ReplySpeaker(load_config(self.cfg.model), self.cfg.tokenizer, self.cfg.checkpoint)
            tokens, mel = self._speaker.speak(reply)
            self.spoken[reply] = tokens.long(), mel.half()
        return self.spoken[reply]
