"""Tiny random models and a word-level tokenizer built in-process: no downloads, deterministic."""
from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

WORDS = ("the a an is was not no yes maybe true false it this that and or but because so what cause effect "
         "premise hypothesis question answer label entailment contradiction neutral positive negative great terrible "
         "good bad movie film man woman dog cat ran sat on in of to he she they we i you are be have has did do "
         "sentence acceptable grammatical : . , ? ! \n").split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[EOS]"]


def tiny_tokenizer(padding_side: str = "right") -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(SPECIALS + sorted(set(WORDS) | set("abcdefghijklmnopqrstuvwxyz0123456789")))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()  # task verbalisers are capitalised (" Yes"); the vocab is not
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", eos_token="[EOS]", padding_side=padding_side)


def tiny_bert(tokenizer, hidden: int = 32, layers: int = 2, seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=hidden * 2, max_position_embeddings=512)
    return BertModel(cfg).eval()


def tiny_qwen(tokenizer, hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2,
              seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=hidden * 2,
                      max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    return Qwen2ForCausalLM(cfg).eval()
