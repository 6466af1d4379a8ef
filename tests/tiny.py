"""Tiny offline tokenizers with the chat templates of the main model families, for tests.

`make_tokenizer(family)` trains a small BPE tokenizer (a few hundred merges, well under a
second) on a built-in corpus, registers the family's special tokens and attaches a chat
template written in the same structure as the family's published template (same turn
markers, same whitespace handling: Llama 3 and Gemma trim contents, Qwen 2.5 and SmolLM2
inject a default system prompt, Llama 3.1 always writes a dated system turn, Gemma 2 refuses a system role, Mistral only shows the
system prompt with the last user turn, Qwen 3 emits a `<think>` block in the final
assistant turn). Results are cached per family; the returned tokenizer is a fresh copy
so tests may mutate it.

Families: see `FAMILIES`."""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

CORPUS = [
    "You are a helpful assistant. You are a pirate captain who loves the sea.",
    "What is the capital of France? The capital of France is Paris.",
    "Tell me about yourself. I am a retired sailor from Lisbon with a cat named Olive.",
    "How do I bake bread? Mix flour, water, salt and yeast, then knead and bake.",
    "Café déjà vu, naïve façade; 東京 北京 上海; emoji 😀🚀🌍; שלום עולם; مرحبا بالعالم.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation ! ? , . ; : ' \" ( ) [ ] { } - _ / \\",
    "The quick brown fox jumps over the lazy dog. Persona vectors average activations.",
    "Answer: yes. Question: why? Because the model thinks before it answers.",
]

SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
QWEN25_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

CHATML_SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + SMOLLM2_DEFAULT_SYSTEM + "<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CHATML_PLAIN = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

QWEN25 = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + QWEN25_DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) "
    "or (message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Qwen3 hybrid-thinking template (tools branches dropped): the final assistant turn after
# the last user query always carries a `<think>` block, empty unless reasoning is given.
QWEN3 = (
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- set ns = namespace(last_query_index=messages|length - 1) %}"
    "{%- for message in messages[::-1] %}"
    "{%- set index = (messages|length - 1) - loop.index0 %}"
    "{%- if message.role == 'user' and ns.last_query_index == messages|length - 1 %}"
    "{%- set ns.last_query_index = index %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- for message in messages %}"
    "{%- if message.content is string %}{%- set content = message.content %}"
    "{%- else %}{%- set content = '' %}{%- endif %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set reasoning_content = '' %}"
    "{%- if message.reasoning_content is string %}"
    "{%- set reasoning_content = message.reasoning_content %}"
    "{%- elif '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index %}"
    "{%- if loop.last or (not loop.last and reasoning_content) %}"
    "{{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') "
    "+ '\\n</think>\\n\\n' + content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

# Qwen3-Instruct-2507 style: the same turns with no `<think>` block.
QWEN3_INSTRUCT = QWEN3.replace(
    "'\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n')",
    "'\\n' + content",
)
assert QWEN3_INSTRUCT != QWEN3

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Llama 3.1+: a system turn is always written (knowledge/date header), the persona after it.
LLAMA31 = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content']|trim %}"
    "{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}"
    "{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

GEMMA2 = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

# Gemma 3 merges the system prompt into the first user turn itself.
GEMMA3 = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}"
)

# Mistral v0.3: the system prompt is shown only with the *last* user message, so a
# finished conversation drops it (pvrs then merges it into the first user turn).
MISTRAL = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}"
    "{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if loop.last and system_message is defined %}"
    "{{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- ' ' + message['content']|trim + eos_token }}"
    "{%- else %}{{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}"
    "{%- endif %}"
    "{%- endfor %}"
)

PHI3 = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and message['content'] %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    """How to build one family's tokenizer: template, special tokens, pre-tokenizer style."""

    template: str
    special_tokens: tuple[str, ...]
    bos: str | None
    eos: str
    metaspace: bool = False  # SentencePiece-style `▁` pieces (Gemma, Mistral) vs byte-level
    default_system: str | None = None
    native_system: bool = True  # False: pvrs merges the persona into the first user turn


FAMILIES: dict[str, Family] = {
    "chatml": Family(CHATML_PLAIN, ("<|im_start|>", "<|im_end|>", "<|endoftext|>"), None, "<|im_end|>"),
    "smollm2": Family(
        CHATML_SMOLLM2,
        ("<|im_start|>", "<|im_end|>", "<|endoftext|>"),
        None,
        "<|im_end|>",
        default_system=SMOLLM2_DEFAULT_SYSTEM,
    ),
    "qwen2.5": Family(
        QWEN25,
        ("<|im_start|>", "<|im_end|>", "<|endoftext|>"),
        None,
        "<|im_end|>",
        default_system=QWEN25_DEFAULT_SYSTEM,
    ),
    "qwen3": Family(
        QWEN3, ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>"), None, "<|im_end|>"
    ),
    "qwen3-instruct": Family(
        QWEN3_INSTRUCT, ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>"), None, "<|im_end|>"
    ),
    "llama3": Family(
        LLAMA3,
        ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|end_of_text|>"),
        "<|begin_of_text|>",
        "<|eot_id|>",
    ),
    "llama3.1": Family(
        LLAMA31,
        ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|end_of_text|>"),
        "<|begin_of_text|>",
        "<|eot_id|>",
    ),
    "gemma2": Family(
        GEMMA2,
        ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<pad>"),
        "<bos>",
        "<eos>",
        metaspace=True,
        native_system=False,
    ),
    "gemma3": Family(
        GEMMA3,
        ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<pad>"),
        "<bos>",
        "<eos>",
        metaspace=True,
        native_system=False,
    ),
    "mistral": Family(
        MISTRAL, ("<s>", "</s>", "[INST]", "[/INST]", "<unk>"), "<s>", "</s>", metaspace=True, native_system=False
    ),
    "phi3": Family(PHI3, ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"), None, "<|endoftext|>"),
}


def _train(family: Family) -> Tokenizer:
    if family.metaspace:
        tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=True)
        tok.decoder = decoders.Metaspace(prepend_scheme="first", split=True)
        alphabet = sorted({ch for line in CORPUS for ch in line.replace(" ", "▁")} | {"\n", "\t"})
        special = ["<unk>", *(t for t in family.special_tokens if t != "<unk>")]
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        special = list(family.special_tokens)
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=special, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    return tok


@functools.cache
def _build(family_name: str) -> PreTrainedTokenizerFast:
    family = FAMILIES[family_name]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=_train(family),
        bos_token=family.bos,
        eos_token=family.eos,
        unk_token="<unk>" if family.metaspace else None,
        additional_special_tokens=[t for t in family.special_tokens if t not in (family.bos, family.eos)],
    )
    fast.chat_template = family.template
    fast.name_or_path = f"tiny-{family_name}"
    return fast


def make_tokenizer(family: str = "chatml") -> PreTrainedTokenizerFast:
    """A fresh tiny fast tokenizer of `family` (one of `FAMILIES`) with its chat template."""
    if family not in FAMILIES:
        raise KeyError(f"unknown tiny tokenizer family {family!r}; choose from {', '.join(FAMILIES)}")
    return copy.deepcopy(_build(family))
