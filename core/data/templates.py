"""The chat template is the user's choice: the model's own, a well-known one, or a Jinja file.

``chat_template`` in the run config:

- empty or ``model``: the tokenizer's own template (a model without one gets ChatML);
- ``chatml``, ``llama3``, ``qwen``, ``gemma``, ``mistral``, ``phi``: the templates below,
  written after those model families' published formats (tools and reasoning included where the
  family has them; a base model being taught a chat format is the usual reason to pick one);
- a path to a ``.jinja`` / ``.j2`` file: a custom template.

The chosen template is set on the tokenizer before training, so it is saved with the model
(``chat_template.jinja`` beside the adapter) and the Playground, evaluation and export, which
load the tokenizer from the model folder, render prompts the same way.

Each template here is prefix-stable (the past renders the same whatever follows) except
``qwen``, which, like Qwen3, shows reasoning only for the turns after the last user message;
:mod:`core.data.chat` handles both.
"""

from __future__ import annotations

from pathlib import Path

from core.errors import ConfigError, Problem

_TC_JSON = ('{"name": "{{ tc[\'function\'][\'name\'] }}", "arguments": {{ tc[\'function\'][\'arguments\'] | tojson }}}')

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

QWEN = (
    "{% if tools %}<|im_start|>system\n{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n"
    "{% endif %}# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
    "{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools>\n\nFor each function call, return a "
    "json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    "{% elif messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n"
    "{% endif %}"
    "{% set ns = namespace(last_user=-1) %}"
    "{% for m in messages %}{% if m['role'] == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% if not loop.first %}<|im_start|>system\n{{ message['content'] }}<|im_end|>\n{% endif %}"
    "{% elif message['role'] == 'user' %}<|im_start|>user\n{{ message['content'] }}<|im_end|>\n"
    "{% elif message['role'] == 'assistant' %}<|im_start|>assistant\n"
    "{% if message.get('reasoning_content') and loop.index0 > ns.last_user %}"
    "<think>\n{{ message['reasoning_content'] }}\n</think>\n\n{% endif %}{{ message['content'] }}"
    "{% set has_text = message['content'] %}"
    "{% for tc in message.get('tool_calls') or [] %}{% if has_text or not loop.first %}\n{% endif %}"
    "<tool_call>\n" + _TC_JSON + "\n</tool_call>{% endfor %}<|im_end|>\n"
    "{% elif message['role'] == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}<|im_start|>user{% endif %}"
    "\n<tool_response>\n{{ message['content'] }}\n</tool_response>"
    "{% if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}<|im_end|>\n{% endif %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LLAMA3 = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] | trim %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set sys = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% if sys or tools %}<|start_header_id|>system<|end_header_id|>\n\n{{ sys }}"
    "{% if tools %}{% if sys %}\n\n{% endif %}You have access to the following functions. To call a function, "
    'respond with JSON for a function call: {"name": function name, "parameters": dictionary of argument '
    "name and its value}.\n\n{% for t in tools %}{{ t | tojson }}\n\n{% endfor %}{% endif %}<|eot_id|>{% endif %}"
    "{% for message in loop_messages %}"
    "{% set role = 'ipython' if message['role'] == 'tool' else message['role'] %}"
    "<|start_header_id|>{{ role }}<|end_header_id|>\n\n"
    "{% if message.get('tool_calls') %}{% for tc in message['tool_calls'] %}"
    '{"name": "{{ tc[\'function\'][\'name\'] }}", "parameters": {{ tc[\'function\'][\'arguments\'] | tojson }}}'
    "{% endfor %}{% else %}{{ message['content'] | trim }}{% endif %}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

GEMMA = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{% set first_prefix = messages[0]['content'] + '\n\n' %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set first_prefix = '' %}"
    "{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "<start_of_turn>{{ role }}\n{{ (first_prefix if loop.first else '') }}{{ message['content'] | trim }}"
    "<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

MISTRAL = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set sys = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% if tools %}[AVAILABLE_TOOLS] {{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}[INST] {% if loop.first and sys %}{{ sys }}\n\n{% endif %}"
    "{{ message['content'] }}[/INST]"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] }}"
    "{% if message.get('tool_calls') %}[TOOL_CALLS] [{% for tc in message['tool_calls'] %}" + _TC_JSON +
    "{% if not loop.last %}, {% endif %}{% endfor %}]{% endif %}{{ eos_token }}"
    "{% elif message['role'] == 'tool' %}[TOOL_RESULTS] {{ message['content'] }}[/TOOL_RESULTS]"
    "{% endif %}{% endfor %}"
)

PHI = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>\n{{ message['content'] }}"
    "{% if tools %}<|tool|>{{ tools | tojson }}<|/tool|>{% endif %}<|end|>\n"
    "{% elif message['role'] == 'tool' %}<|tool_response|>\n{{ message['content'] }}<|end|>\n"
    "{% else %}<|{{ message['role'] }}|>\n{{ message['content'] }}"
    "{% if message.get('tool_calls') %}<|tool_call|>[{% for tc in message['tool_calls'] %}" + _TC_JSON +
    "{% if not loop.last %}, {% endif %}{% endfor %}]<|/tool_call|>{% endif %}<|end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

def _keep_newlines(template: str) -> str:
    """transformers renders with ``trim_blocks``: a newline right after a block tag is dropped,
    so such newlines are written as expressions."""
    return template.replace("%}\n", "%}{{ '\\n' }}")


CHATML, QWEN, LLAMA3, GEMMA, MISTRAL, PHI = map(_keep_newlines, (CHATML, QWEN, LLAMA3, GEMMA, MISTRAL, PHI))
TEMPLATES = {"chatml": CHATML, "llama3": LLAMA3, "qwen": QWEN, "gemma": GEMMA, "mistral": MISTRAL, "phi": PHI}
MODEL_OWN = ("", "model", "default", "auto")
CHOICES_TEXT = "empty (the model's own), " + ", ".join(TEMPLATES) + ", or a path to a .jinja file"


def resolve(choice: str | None) -> str | None:
    """The Jinja text for a ``chat_template`` choice (None: the model's own).

    Raises:
        ConfigError: an unknown name or a file that cannot be read.
    """
    choice = (choice or "").strip()
    if choice.lower() in MODEL_OWN:
        return None
    if choice.lower() in TEMPLATES:
        return TEMPLATES[choice.lower()]
    p = Path(choice).expanduser()
    if p.is_file():
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise _bad(f"chat_template: cannot read {choice}: {exc}", "give a UTF-8 Jinja file") from None
        if "{%" not in text and "{{" not in text:
            raise _bad(f"chat_template: {choice} is not a Jinja template (no {{% or {{{{ in it)",
                       "give a Jinja chat template file")
        return text
    raise _bad(f"chat_template: unknown template {choice!r} (and no such file)", f"use {CHOICES_TEXT}")


def _bad(message: str, hint: str) -> ConfigError:
    return ConfigError(message, hint, problems=[Problem(message, hint, field="chat_template")])


def apply(tokenizer, choice: str | None):
    """Set the chosen template on ``tokenizer`` (saved with it); the model's own stays otherwise."""
    text = resolve(choice)
    if text is not None:
        tokenizer.chat_template = text
    return tokenizer
