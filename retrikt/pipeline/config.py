"""The store build's configuration and the keys its reusable stages are saved under.

Importing nothing from the pipeline's stages, it sits below them: the prompt, RL and run stages and any tool that
reads a store's recorded config (``benchmarks.store_quality``) import it, never each other.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from retrikt.config import arg
from retrikt.teacher.adapted import AdaptConfig
from retrikt.teacher.labeller import LABELLERS


@dataclass
class BuildConfig(AdaptConfig):
    task: str = arg("cb", help="task name")
    teacher: str = arg("qwen-0.5b", help="teacher causal LM: the generator (and the labeller unless "
                                         "--labeller-model names another)")
    labeller: str = arg("adapted", help="how the store is labelled: adapted (the labeller model with a LoRA trained "
                                        "on the seed's k-shot set, cached) | icl (--label-demos of the seed's k-shot "
                                        "examples in context) | zero-shot", choices=list(LABELLERS))
    labeller_model: str | None = arg(None, help="causal LM that labels the store (default: --teacher); its "
                                                "tokenizer may differ from the generator's")
    embedder: str = arg("minilm-l6", help="sentence-transformers model that embeds store entries")
    out: str | None = arg(None, help="store folder (default stores/<task>-<teacher>)")
    per_label: int = arg(200, help="samples generated per label (before filtering); --label-mix kshot spreads "
                                   "per_label x labels in all over the labels")
    source: str = arg("generated", help="what the store holds: generated (soft-prompted teacher samples) | oracle (a "
                                        "reference store: training inputs other than the seed's k-shot examples, "
                                        "labelled by the same labeller; no generation)",
                      choices=["generated", "oracle"])
    label_mix: str = arg("kshot", help="samples per label: kshot (in proportion to the k-shot set's label counts, "
                                       "each label it holds at least one batch) | uniform (per_label each)",
                         choices=["kshot", "uniform"])
    keep_unfinished: bool = arg(False, help="keep samples cut off before end-of-sequence (by --max-new-tokens or "
                                            "--batch-timeout); dropped by default, counted as unfinished")
    drop_label_words: bool = arg(True, help="drop a sample whose text names its own conditioned label (its name, or "
                                            "its verbaliser unless that is yes / no / maybe / true / false); counted "
                                            "as label_words either way")
    perturb_label: int = arg(-1, help="make this label's samples by corrupting generated samples of the other label "
                                      "(a swapped, dropped, repeated or moved word, a broken agreement), for a label "
                                      "that means broken text (CoLA: 0, unacceptable), which the generator does not "
                                      "write when asked; they still pass the agreement filter. -1 = off")
    min_agreement: float = arg(0.5, help="keep a sample only when the labeller's argmax is its conditioned label with "
                                         "at least this probability; 0 keeps all (counted as disagree either way)")
    min_entries: int = arg(0, help="keep generating past the planned samples (--per-label) until the store keeps this "
                                   "many entries: more batches in the planned label mix, each round sized by the keep "
                                   "rate so far. 0 = the planned samples only")
    max_samples: int = arg(0, help="--min-entries: generate at most this many samples in all, whatever the store "
                                   "keeps (0 = 3 x the planned samples)")
    from_store: str | None = arg(None, help="re-filter this finished store instead of generating: its entries that "
                                            "pass --min-agreement (at least the threshold it was built with) go to "
                                            "--out with its provenance; no model is loaded, other build options "
                                            "are ignored. Build once with --min-agreement 0, then sweep")
    teacher_keys: bool = arg(True, help="after labelling, also write the labeller's answer-position states as a "
                                        "second key set (teacher_keys.safetensors: --retrieval-keys teacher)")
    shots: int = arg(32, help="k-shot examples the soft prompt is tuned on (same sampling as retrikt.train)")
    seed: int = arg(1, help="seed of the k-shot sample and of generation")
    draw: int = arg(0, help="which draw of samples: 0 = the seed's own (as every store before the option); N > 0 "
                            "samples anew (generation, its demonstrations, an oracle's inputs, CoLA's corruptions) "
                            "from the same k-shot set, prompt and labeller, to measure how much the draw moves a "
                            "student")
    data_dir: str | None = arg(None, help="folder with glue/ and superglue/ data")
    prompt_tokens: int = arg(20, help="virtual tokens of the soft prompt (RetriKT / Lester et al.: 20-100)")
    prompt_epochs: int = arg(20, help="supervised prompt-tuning epochs over the k-shot pairs")
    prompt_lr: float = arg(0.0, help="prompt-tuning learning rate; 0 = 0.25 x the teacher's token-embedding RMS "
                                     "(Lester et al.'s 0.3 suits T5's large embeddings; measured best 0.03 on "
                                     "SmolLM2 whose RMS is 0.136, so Qwen2.5's 0.017 gives ~4e-3)")
    prompt_batch_size: int = arg(8, help="pairs per prompt-tuning step")
    temperature: float = arg(1.0, help="sampling temperature")
    top_p: float = arg(0.9, help="nucleus sampling threshold")
    max_new_tokens: int = arg(128, help="longest generated sample, in tokens; 0 = auto: 1.5 x the longest k-shot "
                                        "target in teacher tokens, plus 8")
    batch_size: int = arg(8, help="generation batch size (left-padded, KV cache)")
    batch_timeout: float = arg(600.0, help="wall-clock seconds allowed per generation batch")
    dedup_threshold: float = arg(0.95, help="drop a sample whose embedding cosine to a kept one is above this")
    gen_demos: int = arg(0, help="same-label k-shot examples shown in the generator's context, drawn anew for every "
                                 "sample (tuning pairs show others than their target)")
    chat_template: bool = arg(False, help="wrap the generator's condition in the teacher's chat template (an "
                                          "Instruct model then ends its sample with its end-of-turn token)")
    complete_fields: bool = arg(False, help="a sample that ends after its first field(s) (a premise and no "
                                            "hypothesis) is continued once from the next field's cue under the "
                                            "same soft prompt and condition, with a budget of its own "
                                            "(--max-new-tokens, --batch-timeout), so a continued sample may be up to "
                                            "twice as long; counted as completed in the build log")
    task_text: str = arg("name", help="how the generator's condition and the soft prompt's init text name the "
                                      "task: name (its id) | description (its one-line description)",
                         choices=["name", "description"])
    label_demos: int = arg(4, help="--labeller icl: k-shot demonstrations in the labelling prompt")
    label_calibration: str = arg("none", help="--labeller icl / zero-shot: none | content-free (divide by the label "
                                              "probabilities of content-free inputs with the same demonstrations) | "
                                              "batch (divide by their mean over the k-shot inputs, aim at the "
                                              "k-shot label mix; Zhou et al. 2024)",
                                 choices=["none", "content-free", "batch"])
    parse_mode: str = arg("strict", help="strict: every field line must be present; lenient: split the words "
                          "over the fields (only for smoke runs with random tiny models)", choices=["strict", "lenient"])
    index: str = arg("auto", help="FAISS index: auto | flat | hnsw | ivf | ivfpq")
    rl: str = arg("none", help="refine the soft prompt by RL before generating: none | ppo | grpo | rloo",
                  choices=["none", "ppo", "grpo", "rloo"])
    rl_steps: int = arg(20, help="RL steps (rollout batches)")
    rl_batch: int = arg(16, help="samples per PPO rollout batch")
    rl_lr: float = arg(1e-3, help="PPO: AdamW lr of the soft prompt. Adam moves each element by about lr per update "
                                  "whatever the reward's scale, so this, not --rl-kl-coef, bounds the prompt's drift")
    rl_kl_coef: float = arg(0.05, help="PPO: initial coefficient of the per-token KL penalty to the supervised "
                                       "prompt (TRL 0.05). The adaptive controller's horizon is 10k samples, so in a "
                                       "run of a few hundred samples this value is, in effect, fixed")
    device: str = arg("auto", help="auto | cpu | cuda (under accelerate launch: each rank's own GPU)")
    dist_timeout: float = arg(14400.0, help="seconds a rank may wait at a barrier under accelerate launch (rank 0 "
                                            "tunes / RL-refines the prompt and merges the shards meanwhile)")


SMOKE = {"teacher": "tiny-causal", "embedder": "tiny-encoder", "per_label": 8, "shots": 8, "prompt_epochs": 2,
         "max_new_tokens": 24, "batch_size": 8, "label_demos": 1, "rl_steps": 2, "rl_batch": 4, "parse_mode": "lenient",
         "dedup_threshold": 0.9999,  # random tiny embeddings are all close: only drop true duplicates
         # a random generator rarely ends a sample and a random labeller agrees by chance: keep them, or no smoke
         # store would have entries
         "keep_unfinished": True, "min_agreement": 0.0}


def prompt_key(cfg: BuildConfig) -> str:
    """What the tuned prompt depends on; a saved prompt with another key is not reused."""
    keys = ("task", "teacher", "shots", "seed", "prompt_tokens", "prompt_epochs", "prompt_lr", "prompt_batch_size")
    blob = {k: getattr(cfg, k) for k in keys}
    if cfg.task_text != "name":  # prompts tuned before the option existed keep their key
        blob["task_text"] = cfg.task_text
    for k in ("gen_demos", "chat_template"):  # likewise
        if getattr(cfg, k):
            blob[k] = getattr(cfg, k)
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


PPO_SETTINGS = {"rl_kl_coef": "kl_coef", "rl_lr": "lr"}  # BuildConfig field -> its name in keys and labels


def ppo_overrides(config: dict) -> dict:
    """The PPO settings of a build config (a manifest's ``config``) that differ from BuildConfig's defaults."""
    if config.get("rl") != "ppo":
        return {}
    return {name: config[f] for f, name in PPO_SETTINGS.items()
            if f in config and config[f] != getattr(BuildConfig, f)}


def refine_key(cfg) -> str:
    """What the RL-refined prompt depends on; a saved one with another key is not reused."""
    blob = {"prompt": prompt_key(cfg), "rl": cfg.rl, "steps": cfg.rl_steps, "tokens": cfg.max_new_tokens}
    if cfg.label_calibration != "none":  # the reward's labeller changed; keys of uncalibrated runs stay as they were
        blob["label_calibration"] = cfg.label_calibration
    if cfg.labeller != "icl" or (cfg.labeller_model or cfg.teacher) != cfg.teacher:  # likewise
        blob["labeller"] = [cfg.labeller, cfg.labeller_model or cfg.teacher]
    # likewise: only non-default PPO settings change the key
    blob.update(ppo_overrides({"rl": cfg.rl, **{f: getattr(cfg, f) for f in PPO_SETTINGS}}))
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]
