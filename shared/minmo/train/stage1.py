"""Stage 1, speech→text alignment (paper §4.1): ASR and spoken QA, with the paper's freezing schedule.

Phases run in order, each with its own trainable set: `projector` (input projector only), then
`projector+encoder`, then `lora` (LoRA r 16, α 32 on the LLM's q/v projections, with peft). The LLM's
own weights never change, so a spoken question is answered by the same text LLM, reached through speech.

An example is the chat the model is served with (minmo.model.dialogue): system block + user prefix +
projected speech + (the ASR instruction) + user suffix + assistant prefix, then the target reply and the
end of turn. Cheap by construction on a CPU:
- the Whisper encoder is pretrained and frozen in the first phase: its outputs come cached from the shards;
- the context before the audio is the same for every example: while the LLM is frozen its KV cache is
  computed once and shared by every batch;
- LM-head logits only at label positions (the reply), not over the whole sequence (49k-word vocabulary);
- bf16 autocast around the LLM, sequences bucketed by length.

Runs under `torchrun` (DDP; gloo on CPU, NCCL on GPUs) or as one process. Checkpoints (safetensors weights and
optimizer state + progress JSON) every `checkpoint_every` steps and at each phase's end; a run started again
on the same folder resumes. `export/` always holds the latest trained weights in the layout
`build_component(checkpoint=...)` loads; `loss.png` plots the loss.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from minmo.model.build import LORA_CONFIG_FILE, LORA_FILE, build_component
from minmo.model.config import MinMoConfig, load_config
from minmo.model.dialogue import ChatFormat
from minmo.model.llm import LLMState, decoder_step, empty_kv_state
from minmo.model.tokenizer import load_tokenizer
from minmo.train.data import Utterance, read_split

TRAINABLE = ("projector", "encoder", "lora")


@dataclass(frozen=True)
class Phase:
    """One step of the freezing schedule."""

    name: str
    steps: int
    train: tuple[str, ...]  # subset of TRAINABLE
    lr: float = 5e-4
    objective: str = "lm"  # lm: the LLM's loss on the reply; ctc: see SpeechToText.ctc (no LLM pass, cheap)

    @classmethod
    def from_toml(cls, table: dict) -> Phase:
        """A `[[phases]]` table of a training config file (TOML arrays become tuples)."""
        return cls(**(table | {"train": tuple(table["train"])}))


@dataclass(frozen=True)
class Stage1Config:
    model: str = "nano"
    data: str = "data/nano"
    out: str = "runs/nano-stage1"
    phases: tuple[Phase, ...] = (
        Phase("projector", 3000, ("projector",), 5e-4),
        Phase("projector+encoder", 500, ("projector", "encoder"), 1e-4),
        Phase("lora", 1000, ("projector", "lora"), 2e-4),
    )
    batch_size: int = 8
    warmup_steps: int = 50
    checkpoint_every: int = 50
    eval_items: int = 64  # held-out teacher-forced loss at each phase's end, on this many eval utterances
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    bf16: bool = True
    threads: int = 0  # torch threads per process; 0: torch's default
    seed: int = 0
    max_target_tokens: int = 64
    stop_after_steps: int = 0  # stop (with a checkpoint) after this many steps in one run; 0: run to the end
    init: str = ""  # a folder of trained weights (a run's export/, a shipped checkpoint) a new run starts from

    @classmethod
    def from_toml(cls, path: str | Path) -> Stage1Config:
        raw = tomllib.loads(Path(path).read_text())
        phases = tuple(Phase.from_toml(p) for p in raw.pop("phases", []))
        for key in ("lora_targets",):
            if key in raw:
                raw[key] = tuple(raw[key])
        cfg = cls(**raw)
        return dataclasses.replace(cfg, phases=phases) if phases else cfg


@dataclass
class Example:
    """One utterance made ready for the LLM: speech (cached encoder output or log-mel) and token ids."""

    mel: torch.Tensor  # (T, mels)
    encoded: torch.Tensor | None  # (N, dim) cached frozen-encoder output
    after: list[int]  # instruction + user suffix + assistant prefix + target + end of turn
    target_count: int  # how many of `after`'s last ids are labels
    spoken: list[int]  # token ids of what the user said (the ctc objective's target)


class SpeechToText(nn.Module):
    """The speech encoder's trainable parts and the LLM, computing the stage-1 loss of a batch."""

    def __init__(self, cfg: MinMoConfig) -> None:
        super().__init__()
        cfg = dataclasses.replace(cfg, checkpoint="")  # training starts from the pretrained parts, not a shipped run
        speech = build_component(cfg, "speech_encoder")
        self.voice_encoder = speech.voice_encoder
        self.input_projector = speech.input_projector
        self.llm = build_component(cfg, "llm")
        self.format = ChatFormat.from_tokenizer(load_tokenizer(cfg.llm))
        self.prefix_ids = self.format.system_block("") + self.format.user_prefix
        self.cached_prefix: LLMState | None = None
        self.ctc_blank = nn.Parameter(torch.zeros(self.llm.hidden_size))  # the ctc objective's blank "embedding"

    def set_trainable(self, parts: tuple[str, ...], objective: str = "lm") -> None:
        """Freeze everything but `parts`; the ctc blank trains only under the ctc objective (DDP requires every
        trainable parameter to get a gradient)."""
        unknown = set(parts) - set(TRAINABLE)
        assert not unknown, f"unknown trainable parts {sorted(unknown)}; known: {TRAINABLE}"
        for p in self.parameters():
            p.requires_grad_(False)
        for p in self.input_projector.parameters():
            p.requires_grad_("projector" in parts)
        self.ctc_blank.requires_grad_("projector" in parts and objective == "ctc")
        for p in self.voice_encoder.parameters():
            p.requires_grad_("encoder" in parts)
        for name, p in self.llm.named_parameters():
            if "lora_" in name:
                p.requires_grad_("lora" in parts)
        self.voice_encoder.train("encoder" in parts)
        self.cached_prefix = None  # the prefix's KV entries change with LoRA

    @property
    def llm_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.llm.parameters())

    def forward(self, batch: list[Example], bf16: bool = True, objective: str = "lm") -> torch.Tensor:
        """Mean cross-entropy of the batch's reply tokens (objective "lm"), or the ctc loss."""
        if objective == "ctc":
            return self.ctc(batch)
        assert objective == "lm", f"unknown objective {objective!r}: expected lm or ctc"
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            audio = [self._speech(example) for example in batch]  # (N_i, D) each
            embed = self.llm.embed
            rows = [torch.cat([a, embed(torch.tensor([ex.after[:-1]]))[0]]) for a, ex in zip(audio, batch, strict=True)]
            width = max(row.shape[0] for row in rows)
            inputs = torch.stack([F.pad(row, (0, 0, 0, width - row.shape[0])) for row in rows])  # (B, L, D)
            hidden, _ = decoder_step(self.llm.model.get_decoder(), inputs, self._prefix_state(len(batch)))
            positions, labels = [], []
            for index, (a, ex) in enumerate(zip(audio, batch, strict=True)):
                first = a.shape[0] + len(ex.after) - 1 - ex.target_count  # input position predicting target[0]
                positions += [(index, first + k) for k in range(ex.target_count)]
                labels += ex.after[-ex.target_count :]
            rows_index, cols_index = zip(*positions, strict=True)
            selected = hidden[list(rows_index), list(cols_index)]  # (labels, D)
            logits = self.llm.model.get_output_embeddings()(selected)
        return F.cross_entropy(logits.float(), torch.tensor(labels))

    def ctc(self, batch: list[Example]) -> torch.Tensor:
        """CTC between the projected speech and what was said, scored against the LLM's own (tied, frozen) token
        embeddings: each 12.5 Hz frame's logits are its dot products with the embeddings of the batch's tokens
        (+ a learned blank). It pulls the projector's output towards the embeddings of the words spoken, with no
        LLM pass (a warm start before the LLM's loss; the LLM-loss phases then fit it to what the LLM reads)."""
        vocab = sorted({token for example in batch for token in example.spoken})
        index = {token: i for i, token in enumerate(vocab)}
        table = torch.cat([self.llm.model.get_input_embeddings().weight[vocab], self.ctc_blank[None]])  # (V+1, D)
        audio = [self._speech(example) for example in batch]  # (N_i, D)
        width = max(a.shape[0] for a in audio)
        frames = torch.stack([F.pad(a, (0, 0, 0, width - a.shape[0])) for a in audio])  # (B, N, D)
        log_probs = (frames @ table.T).float().log_softmax(-1).transpose(0, 1)  # (N, B, V+1)
        targets = torch.tensor([index[t] for example in batch for t in example.spoken])
        return F.ctc_loss(
            log_probs, targets, [a.shape[0] for a in audio], [len(example.spoken) for example in batch],
            blank=len(vocab), zero_infinity=True,
        )

    def _speech(self, example: Example) -> torch.Tensor:
        """Projected speech (N, D) of one utterance (one at a time: Whisper attends over all of it, so no padding)."""
        if example.encoded is not None and not any(p.requires_grad for p in self.voice_encoder.parameters()):
            frames = example.encoded.float()[None]
        else:
            frames = self.voice_encoder(example.mel.float()[None])
        return self.input_projector(frames)[0]

    def _prefix_state(self, batch: int) -> LLMState:
        """The KV cache of the context before the audio, for `batch` rows (computed once while the LLM is frozen)."""
        if self.cached_prefix is not None and self.llm_frozen:
            state = self.cached_prefix
        else:
            decoder = self.llm.model.get_decoder()
            weight = self.llm.model.get_input_embeddings().weight
            empty = empty_kv_state(LLMState, decoder.config, 1, weight.dtype, weight.device)
            with torch.set_grad_enabled(not self.llm_frozen):
                _, state = decoder_step(decoder, self.llm.embed(torch.tensor([self.prefix_ids])), empty)
            self.cached_prefix = state if self.llm_frozen else None
        return dataclasses.replace(
            state,
            keys=[k.expand(batch, -1, -1, -1) for k in state.keys],
            values=[v.expand(batch, -1, -1, -1) for v in state.values],
        )

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Everything training may change: projector, encoder, LoRA (names of this module)."""
        keep = ("input_projector.", "voice_encoder.", "ctc_blank")
        return {
            name: tensor.detach().clone()
            for name, tensor in self.state_dict().items()
            if name.startswith(keep) or "lora_" in name
        }


def add_lora(model: SpeechToText, cfg: Stage1Config) -> None:
    """Inject LoRA adapters (peft) into the LLM's attention projections; B starts at zero, so nothing changes yet."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.lora_targets),
                        lora_dropout=0.0, bias="none")
    inject_adapter_in_model(config, model.llm.model)


def make_examples(model: SpeechToText, utterances: list[Utterance], max_target_tokens: int) -> list[Example]:
    tokenizer = model.format.tokenizer
    examples = []
    for utt in utterances:
        target = tokenizer.encode(utt.item.target)[:max_target_tokens] + model.format.assistant_end[:1]
        after = tokenizer.encode(utt.item.instruction) + model.format.user_suffix + model.format.assistant_prefix
        examples.append(Example(utt.mel, utt.encoded, after + target, len(target), tokenizer.encode(utt.item.text)))
    return examples


def batches(examples: list[Example], batch_size: int, seed: int, rank: int, world: int) -> list[list[int]]:
    """One epoch of batches: shuffled, then bucketed by length in windows of 32 batches; rank's share."""
    rng = random.Random(seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    window = 32 * batch_size
    result = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: examples[i].mel.shape[0] + len(examples[i].after))
        result += [chunk[i : i + batch_size] for i in range(0, len(chunk) - batch_size + 1, batch_size)]
    rng.shuffle(result)
    usable = len(result) // world * world
    return result[rank:usable:world]


def learning_rate(phase: Phase, step: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% over the phase."""
    if step < warmup:
        return phase.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, phase.steps - warmup)
    return phase.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(cfg: Stage1Config) -> Path:
    """Run (or resume) the schedule; returns the run folder."""
    rank, world = init_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model = SpeechToText(load_config(cfg.model))
    if any("lora" in phase.train for phase in cfg.phases):
        add_lora(model, cfg)
    progress = _load_progress(out, model)
    if cfg.init and progress["global_step"] == 0:
        load_trained(model, Path(cfg.init))
    examples = make_examples(model, list(read_split(cfg.data, "train")), cfg.max_target_tokens)
    assert examples, f"no training shards in {cfg.data}: run `minmo data build` first"
    if rank == 0:
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        print(f"stage 1: {len(examples)} training utterances, {world} process(es), run folder {out}")
    for phase_index, phase in enumerate(cfg.phases):
        if phase_index < progress["phase"]:
            continue
        if not _run_phase(cfg, model, examples, phase_index, phase, progress, out, rank, world):
            break
    if world > 1:
        dist.destroy_process_group()
    return out


def _run_phase(cfg, model, examples, phase_index, phase, progress, out, rank, world) -> bool:
    """Train one phase to its end (True), or until `stop_after_steps` in this run (False, checkpoint saved)."""
    model.set_trainable(phase.train, phase.objective)
    params = [p for p in model.parameters() if p.requires_grad]
    ddp = nn.parallel.DistributedDataParallel(model, broadcast_buffers=False) if world > 1 else None
    optimizer = torch.optim.AdamW(params, lr=phase.lr, weight_decay=0.0)
    if progress["step"] > 0:
        _load_optimizer(out, model, optimizer)
    epoch, epoch_batches = -1, []
    bar = tqdm(total=phase.steps, initial=progress["step"], desc=f"stage1 {phase.name}", disable=rank != 0)
    while progress["step"] < phase.steps:
        if progress["steps_this_run"] == cfg.stop_after_steps > 0:
            _save(out, model, optimizer, progress, phase_index, cfg)
            return False
        # step s of a phase is batch s % n of epoch s // n, whenever the run (re)started
        per_epoch = len(batches(examples, cfg.batch_size, 0, rank, world))
        wanted, offset = divmod(progress["step"], per_epoch)
        if wanted != epoch:
            epoch = wanted
            epoch_batches = batches(examples, cfg.batch_size, cfg.seed + 1000 * phase_index + epoch, rank, world)
        indices = epoch_batches[offset]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(phase, progress["step"], cfg.warmup_steps)
        started = time.perf_counter()
        loss = (ddp or model)([examples[i] for i in indices], cfg.bf16, phase.objective)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        value = mean_across(loss.detach(), world)
        progress["step"] += 1
        progress["steps_this_run"] += 1
        progress["losses"].append([progress["global_step"], phase_index, value])
        progress["global_step"] += 1
        bar.set_postfix(loss=f"{value:.3f}", s_per_step=f"{time.perf_counter() - started:.2f}")
        bar.update(1)
        if rank == 0 and (progress["step"] % cfg.checkpoint_every == 0 or progress["step"] == phase.steps):
            _save(out, model, optimizer, progress, phase_index, cfg)
    bar.close()
    if rank == 0:
        held_out = evaluate_loss(model, cfg)
        progress["evals"].append({"phase": phase.name, "heldout_loss": held_out})
        print(f"phase {phase.name} done: held-out loss {held_out:.3f}")
    progress["phase"], progress["step"] = phase_index + 1, 0
    if rank == 0:
        _save(out, model, optimizer, progress, phase_index, cfg)
    return True


@torch.no_grad()
def evaluate_loss(model: SpeechToText, cfg: Stage1Config) -> float:
    """Teacher-forced loss on held-out voices (the `eval` split): a quick check at the end of each phase."""
    utterances = [u for _, u in zip(range(cfg.eval_items), read_split(cfg.data, "eval"), strict=False)]
    examples = make_examples(model, utterances, cfg.max_target_tokens)
    if not examples:
        return float("nan")
    losses = [model(examples[i : i + cfg.batch_size], cfg.bf16).item() for i in range(0, len(examples), cfg.batch_size)]
    return sum(losses) / len(losses)


def export_weights(model: SpeechToText, cfg: Stage1Config, folder: Path, trained: set[str]) -> None:
    """Write what training changed where `build_component(cfg, name, checkpoint=folder)` finds it."""
    folder.mkdir(parents=True, exist_ok=True)
    state = model.trainable_state()
    speech = {f"input_projector.{k.removeprefix('input_projector.')}": v for k, v in state.items()
              if k.startswith("input_projector.")}
    if "encoder" in trained:
        speech |= {k: v for k, v in state.items() if k.startswith("voice_encoder.")}
    save_file(speech, str(folder / "speech_encoder.safetensors"))
    lora = {k.removeprefix("llm.model."): v for k, v in state.items() if "lora_" in k}
    if "lora" in trained and lora:
        save_file(lora, str(folder / LORA_FILE))
        (folder / LORA_CONFIG_FILE).write_text(json.dumps({"rank": cfg.lora_rank, "alpha": cfg.lora_alpha}))


def load_trained(model: SpeechToText, folder: Path) -> None:
    """Start from the weights `export_weights` wrote to `folder` (continuing a shipped model with new data or
    phases); a LoRA there loads only when this run has one."""
    state = load_file(str(folder / "speech_encoder.safetensors"))
    if (folder / LORA_FILE).is_file() and any("lora_" in name for name, _ in model.named_parameters()):
        state |= {f"llm.model.{k}": v for k, v in load_file(str(folder / LORA_FILE)).items()}
    _, unknown = model.load_state_dict(state, strict=False)  # copies cast the stored float16 to the model's dtype
    assert not unknown, f"{folder} has weights this model lacks: {unknown[:5]}"
    print(f"stage 1 starts from {folder} ({len(state)} tensors)")


def _save(out: Path, model: SpeechToText, optimizer, progress: dict, phase_index: int, cfg: Stage1Config) -> None:
    folder = out / "checkpoint"
    folder.mkdir(exist_ok=True)
    save_file(model.trainable_state(), str(folder / "trainable.safetensors.partial"))
    save_file(optimizer_tensors(model, optimizer), str(folder / "optimizer.safetensors.partial"))
    (folder / "progress.json.partial").write_text(json.dumps(progress))
    for name in ("trainable.safetensors", "optimizer.safetensors", "progress.json"):
        (folder / f"{name}.partial").rename(folder / name)
    trained = {part for phase in cfg.phases[: phase_index + 1] for part in phase.train}
    export_weights(model, cfg, out / "export", trained)
    plot_losses(progress, cfg, out / "loss.png")


def _load_progress(out: Path, model: SpeechToText) -> dict:
    folder = out / "checkpoint"
    if not (folder / "progress.json").is_file():
        return {"phase": 0, "step": 0, "global_step": 0, "steps_this_run": 0, "losses": [], "evals": []}
    _, unexpected = model.load_state_dict(load_file(str(folder / "trainable.safetensors")), strict=False)
    assert not unexpected, f"checkpoint has weights this model lacks: {unexpected[:5]}"
    progress = json.loads((folder / "progress.json").read_text()) | {"steps_this_run": 0}
    print(f"resuming {out}: phase {progress['phase']}, step {progress['step']}")
    return progress


def _load_optimizer(out: Path, model: SpeechToText, optimizer) -> None:
    saved = load_file(str(out / "checkpoint" / "optimizer.safetensors"))
    params = dict(model.named_parameters())
    for key, value in saved.items():
        name, _, slot = key.partition("|")
        state = optimizer.state[params[name]]
        state[slot] = value.reshape(()) if slot == "step" else value


def init_distributed() -> tuple[int, int]:
    """(rank, world size) of this process; under torchrun (WORLD_SIZE > 1) joins the process group first (NCCL on
    GPUs, gloo on the CPU). Safe to call again."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def mean_across(value: torch.Tensor, world: int) -> float:
    """The mean of a scalar over every process (for the loss the progress bar and the plot show)."""
    if world > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= world
    return float(value)


def plot_losses(progress: dict, cfg: Stage1Config, path: Path) -> None:
    """Training loss per step (and a moving average), one colour per phase."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 4))
    losses = progress["losses"]
    for phase_index, phase in enumerate(cfg.phases):
        points = [(step, loss) for step, index, loss in losses if index == phase_index]
        if points:
            steps, values = zip(*points, strict=True)
            axes.plot(steps, values, alpha=0.3)
            window = max(1, len(values) // 50)
            smooth = [sum(values[max(0, i - window) : i + 1]) / len(values[max(0, i - window) : i + 1])
                      for i in range(len(values))]
            axes.plot(steps, smooth, label=phase.name)
    axes.set_xlabel("step")
    axes.set_ylabel("loss (lm: reply cross-entropy; ctc: per token)")
    axes.set_title(f"stage 1 ({cfg.model})")
    if progress["losses"]:  # a run that took no step yet has no curve to name
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    pyplot.close(figure)

def optimizer_tensors(model: torch.nn.Module, optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's state as safetensors can hold it: "<parameter name>|<key>" -> tensor (scalars as 1-d)."""
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                tensors[f"{names[id(p)]}|{key}"] = value.detach().clone().reshape(-1) if value.dim() == 0 else value
    return tensors
