"""transformers as the oracle for an exported checkpoint: same chat prompt, same greedy tokens, same stop.

`assert_chat_matches_transformers(ckpt, work)` renders one multi-turn conversation with
`AutoTokenizer.apply_chat_template` and generates greedily with `AutoModelForCausalLM.generate`,
each reading only the checkpoint's files (tokenizer_config.json's template, generation_config.json's
eos ids), and checks that our engine (`Tokenizer` + `Generator`) gives exactly the same prompt ids and
completion. A tiny model rarely emits a stop token by itself, so the check is repeated on a copy whose
<|endoftext|> row of the (tied or untied) output matrix is a slightly scaled copy of the row of a
token greedy decoding first picks at some step k >= 2: there, and nowhere earlier, <|endoftext|>
becomes the argmax, and both engines must stop on it at step k.
"""

from __future__ import annotations

from pathlib import Path

import torch

from reasoning.generate import Generator, SamplingConfig
from reasoning.tokenizer import Tokenizer
from reasoning.weights import load_model, save_model

CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is 12 + 7?"},
    {"role": "assistant", "content": "\\boxed{19}", "reasoning_content": " 12 + 7 = 19 "},
    {"role": "user", "content": "Solve 3x + 4 = 10."},
]
MAX_NEW_TOKENS = 12


def _ours(ckpt: Path, think: bool) -> tuple[list[int], list[int], str]:
    tok = Tokenizer(ckpt)
    prompt = tok.encode(tok.apply_chat_template(CONVERSATION, enable_thinking=think))
    [[c]] = Generator(load_model(ckpt), tok).generate([prompt], SamplingConfig(max_new_tokens=MAX_NEW_TOKENS))
    return prompt, c.tokens, c.finish_reason


def _transformers(ckpt: Path, think: bool) -> tuple[list[int], list[int]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt)
    inputs = tok.apply_chat_template(CONVERSATION, add_generation_prompt=True, enable_thinking=think,
                                     return_dict=True, return_tensors="pt")
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    prompt = inputs["input_ids"][0].tolist()
    return prompt, out[0, len(prompt):].tolist()


def assert_chat_matches_transformers(ckpt: Path, work: Path, think: bool = True) -> None:
    """See the module docstring; `work` is a scratch directory for the edited copy."""
    prompt, tokens, _ = _ours(ckpt, think)
    assert _transformers(ckpt, think) == (prompt, tokens)

    eot = Tokenizer(ckpt).eos_id
    model = load_model(ckpt)
    # The first step from 2 on whose greedy token is new: the copy may stop there and nowhere earlier.
    stop_at = next((k for k in range(2, len(tokens)) if tokens[k] not in tokens[:k]), None)
    assert stop_at is not None and eot not in tokens, f"no step to stop at in the completion {tokens}"
    with torch.no_grad():  # tied: this also moves <|endoftext|>'s input embedding, which no prompt holds
        model.lm_head.weight[eot] = model.lm_head.weight[tokens[stop_at]] * 1.01
    stops = save_model(model, work / "stops_at_endoftext", tokenizer_path=ckpt)  # the export's own files
    prompt2, tokens2, finish = _ours(stops, think)
    assert (prompt2, tokens2, finish) == (prompt, tokens[:stop_at] + [eot], "stop")
    assert _transformers(stops, think) == (prompt, tokens2)
